"""Shared fixtures: a real Prefect test harness, real stores in temporary folders, the shared sets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from flows.settings import apply_defaults

# Prefect, MLflow, Matplotlib and Dask keep their state in a throw-away folder during tests.
apply_defaults(Path(tempfile.mkdtemp(prefix="annostyle-tests-")))

PROJECT = Path(__file__).resolve().parent.parent
CONFIGS = PROJECT / "configs"
SHARED = PROJECT.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def prefect_harness():
    """One real (temporary) Prefect API for every test that runs a flow."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session", autouse=True)
def stop_root_servers(tmp_path_factory):
    """Commands run by the tests start their root's shared Prefect server and command host
    (`flows.server`, `flows.host`); stop every one still running under the session's folders,
    so none outlives the test run."""
    yield
    from flows.server import stop
    from storage.layout import RootLayout

    for root in roots_with_servers(tmp_path_factory.getbasetemp()):
        stop(RootLayout(root))


@pytest.fixture(autouse=True)
def stop_test_servers(request):
    """A test's root servers and command hosts stop when the test ends: each host holds its
    imports (hundreds of MB), so they must not pile up over a session."""
    tmp = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if tmp is None:
        return
    from flows.server import stop
    from storage.layout import RootLayout

    for root in roots_with_servers(tmp):
        stop(RootLayout(root))


def roots_with_servers(folder: Path) -> set[Path]:
    """The roots under `folder` whose server or command host left a record."""
    return {p.parent.parent for pattern in ("**/prefect/server.json", "**/prefect/host.json")
            for p in folder.glob(pattern)}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A fresh annostyle root: stores and the MLflow SQLite store go here."""
    path = tmp_path / "root"
    path.mkdir()
    return path


def tree_digest(path: Path) -> dict[str, bytes]:
    """Every file under a folder with its bytes: equal digests mean nothing changed."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != ".write.lock"}


def check_message(err: str, words: list[str]) -> None:
    """`err` is the command line's one-line error (no traceback) and names each of `words`."""
    message = err.lower()
    assert message.startswith("annostyle: error: "), err
    assert "traceback" not in message, err
    for word in words:
        assert word.lower() in message, f"{word!r} not in {err!r}"


def make_batch(names, lengths, annotators, labels, *, classes=("a", "b", "c"), features=True,
               gold=None, replace=False, seed=0, source="batch.csv"):
    """A small hand-made batch; features are a deterministic function of the seed."""
    from storage.batch import Batch

    n = int(sum(lengths))
    rng = np.random.default_rng(seed)
    return Batch(
        sequence_names=list(names), sequence_lengths=np.asarray(lengths), annotators=list(annotators),
        classes=list(classes), labels=np.asarray(labels, np.int16).reshape(n, len(annotators)),
        gold=None if gold is None else np.asarray(gold, np.int16),
        features=rng.normal(size=(n, 3)).astype(np.float32) if features else None,
        sources={"labels": source}, replace=replace,
    )


def big_batch(which: str):
    """Batches for the kill test: "A" creates 20 sequences; "B" adds 60 longer ones (~80 MB of
    features) and a new annotator's labels on A's first 10 sequences (rows changed in place)."""
    rng = np.random.default_rng({"A": 1, "B": 2}[which])
    if which == "A":
        names, lengths, annotators = [f"s{i:03d}" for i in range(20)], [5000] * 20, ["ann0", "ann1"]
    else:
        names = [f"s{i:03d}" for i in range(10)] + [f"s{i:03d}" for i in range(20, 80)]
        lengths, annotators = [5000] * 10 + [10000] * 60, ["ann0", "ann2"]
    n = sum(lengths)
    labels = rng.integers(-1, 3, size=(n, 2)).astype(np.int16)
    if which == "B":
        labels[:50000, 0] = -1  # ann0 adds nothing to A's frames; ann2 is new there
    features = rng.normal(size=(n, 32)).astype(np.float32)
    if which == "B":
        features[:50000] = big_batch("A").features[:50000]
    from storage.batch import Batch

    return Batch(sequence_names=names, sequence_lengths=np.asarray(lengths), annotators=annotators,
                 classes=["a", "b", "c"], labels=labels, gold=None, features=features,
                 sources={"labels": f"kill-test-{which}"})


def kill_when_written(code: str, folder: Path, pattern: str, timeout: float = 120.0) -> Path:
    """Run `code` in a new Python process and SIGKILL it as soon as a file matching `pattern`
    appears under `folder`; returns that file (the test fails if the process ended first)."""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if list(folder.glob(pattern)):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    return next(folder.glob(pattern))


def processes_of(root: Path) -> set[int]:
    """Every live process that names the root in its command line or environment (a command run
    under it sets PREFECT_HOME=<root>/prefect, which its children inherit)."""
    marker, found = str(root).encode(), set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
                continue
            if marker in (entry / "cmdline").read_bytes() or marker in (entry / "environ").read_bytes():
                found.add(int(entry.name))
        except OSError:
            continue
    return found
