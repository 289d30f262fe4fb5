"""A real process killed with SIGKILL in the middle of an append loses nothing committed; a
killed `annostyle run` leaves no process behind but the root's shared Prefect server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import big_batch, processes_of

from configs.schema import StoreConfig
from storage.dataset_store import DatasetStore, open_or_create

CONFIG = StoreConfig(chunk_frames=16384)
APPEND = """
import sys
sys.path.insert(0, {tests!r})
from conftest import big_batch
from configs.schema import StoreConfig
from storage.dataset_store import open_or_create
store = open_or_create({uri!r}, StoreConfig(chunk_frames=16384), ["a", "b", "c"], None)
print(store.append(big_batch({which!r}), progress=False).version)
"""


def append_in_subprocess(uri: Path, which: str) -> subprocess.Popen:
    code = APPEND.format(tests=str(Path(__file__).parent), uri=str(uri), which=which)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def pending(uri: Path) -> bool:
    return "pending" in json.loads((uri / "zarr.json").read_text())["attributes"]


@pytest.mark.slow
def test_sigkill_mid_append_rolls_back_and_a_retry_completes(tmp_path):
    reference = tmp_path / "uninterrupted.zarr"
    ref = open_or_create(str(reference), CONFIG, ["a", "b", "c"], None)
    ref.append(big_batch("A"), progress=False)
    ref.append(big_batch("B"), progress=False)

    uri = tmp_path / "killed.zarr"
    store = open_or_create(str(uri), CONFIG, ["a", "b", "c"], None)
    version_a = store.append(big_batch("A"), progress=False).version
    labels_a = store.read_labels()

    kills = 0
    for delay in (0.0, 0.05, 0.2, 0.5):
        proc = append_in_subprocess(uri, "B")
        deadline = time.monotonic() + 120
        while not pending(uri) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.returncode != -signal.SIGKILL:
            break  # the append finished before the kill landed
        kills += 1
        assert pending(uri), "the kill should land in the middle of the append"
        killed = DatasetStore.open(uri)
        assert killed.version == version_a
        assert (killed.n_frames, killed.n_annotators) == (100000, 2)
        np.testing.assert_array_equal(killed.read_labels(), labels_a)
    assert kills >= 2, "at least two kills must land mid-append"

    retry = append_in_subprocess(uri, "B")
    out, err = retry.communicate(timeout=300)
    assert retry.returncode == 0, err.decode()
    done = DatasetStore.open(uri)
    assert not pending(uri)
    assert out.decode().strip() == done.version == DatasetStore.open(reference).version
    np.testing.assert_array_equal(done.read_labels(), DatasetStore.open(reference).read_labels())
    np.testing.assert_array_equal(done.features[:], DatasetStore.open(reference).features[:])
    assert done.n_labels == DatasetStore.open(reference).n_labels
    old = DatasetStore.open(uri, version=version_a)
    np.testing.assert_array_equal(old.read_labels(), labels_a)


# ----------------------------------------------------------------------------- a killed command
def user_env() -> dict[str, str]:
    """A user's shell: none of the test session's Prefect, MLflow or scratch settings."""
    drop = ("MPLCONFIGDIR", "DASK_TEMPORARY_DIRECTORY", "MLFLOW_TRACKING_URI")
    return {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ANNOSTYLE_")) and k not in drop}


@pytest.mark.slow
def test_a_sigkilled_run_leaves_only_the_shared_server_which_server_stop_stops(tmp_path):
    """A real `annostyle run`, SIGKILLed once its flow is writing the dataset store, leaves no
    process of ours but the root's documented shared Prefect server and command host; a rerun
    reuses them; `annostyle server stop` stops them and nothing of ours is left."""
    from storage.layout import RootLayout

    project = Path(__file__).resolve().parent.parent
    root = tmp_path / "root"
    layout = RootLayout(root)
    command = [sys.executable, "-m", "flows.cli", "run", str(project / "configs" / "bluebirds.yaml"),
               "--root", str(root), "--json"]
    proc = subprocess.Popen(command, cwd=project, env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    store = Path(layout.dataset_uri("bluebirds"))
    deadline = time.monotonic() + 300
    while not store.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    try:
        shared = {json.loads(path.read_text())["pid"] for path in (layout.server_state, layout.host_state)}
        time.sleep(1.0)  # anything the command had started has had time to show itself
        assert processes_of(root) == shared, "only the shared server and host may outlive a killed command"

        rerun = subprocess.run(command, cwd=project, env=user_env(), capture_output=True, text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert json.loads(rerun.stdout.strip().splitlines()[-1])["dataset"] == "bluebirds"
        assert {json.loads(path.read_text())["pid"] for path in (layout.server_state, layout.host_state)} == shared
        assert processes_of(root) == shared
    finally:
        stop = subprocess.run([sys.executable, "-m", "flows.cli", "server", "stop", "--root", str(root)],
                              cwd=project, env=user_env(), capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0, stop.stderr
    assert processes_of(root) == set()
