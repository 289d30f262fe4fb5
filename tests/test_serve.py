"""`annostyle serve`: the watcher's ledger and scan logic, and a real server, serve process and batches.

The end-to-end test starts `prefect server start` on a free loopback port (its own PREFECT_HOME),
serves `configs/bluebirds.yaml` (label-only: a reprocess is ingest + label-based analysis), runs the
cron deployment once, drops batches into the watched folder, kills and restarts the serve process,
and checks through the Prefect API, the ledger and the dataset store that each batch ran once.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CONFIGS, PROJECT, make_batch

from errors import InputError
from flows import watch as w
from storage.layout import RootLayout
from tasks import inbox as ib
from tasks import ledger as lg

NOW = datetime(2026, 1, 1, tzinfo=UTC)
TABLE_CONFIG = "name: toy\nsource:\n  kind: table\n  path: labels.csv\n"


def found(name: str, digest: str, mtime: int = 0) -> lg.Found:
    return lg.Found(name, Path("/in") / name, digest, mtime)


# ----------------------------------------------------------------------------- pure logic
def test_names_hidden_and_partial_files_are_never_batches() -> None:
    assert ib.is_candidate_file("b1.csv", "table") and ib.is_candidate_file("b1.yaml", "table")
    assert ib.is_candidate_file("b1.json", "mapping") and not ib.is_candidate_file("b1.json", "table")
    for name in (".b1.csv", "b1.csv~", "b1.csv.tmp", "b1.csv.part", "b1.yaml.partial", "notes.txt"):
        assert not ib.is_candidate_file(name, "table"), name


def test_an_entry_is_stable_after_one_unchanged_scan_or_when_the_ledger_knows_it() -> None:
    a, b = [["/in/a", 10, 1]], [["/in/b", 5, 2]]
    assert ib.stable_names({"a": a}, {}, {}) == []
    assert ib.stable_names({"a": a, "b": b}, {"a": a, "b": [["/in/b", 4, 1]]}, {}) == ["a"]
    assert ib.stable_names({"a": a}, {}, {"a": lg.Seen(signature=a, digest="x")}) == ["a"]
    assert ib.stable_names({"a": a}, {}, {"a": lg.Seen(signature=[["/in/a", 11, 3]], digest="x")}) == []


def test_due_takes_new_and_retryable_batches_oldest_first_and_each_hash_once() -> None:
    ledger = lg.new_ledger("toy", "/in")
    ledger = lg.mark_running(ledger, found("done.csv", "d"), "run-d", NOW)
    ledger = lg.mark_finished(ledger, "d", "COMPLETED", None, NOW, 10)
    ledger = lg.mark_running(ledger, found("late.csv", "f"), "run-f", NOW)
    ledger = lg.mark_finished(ledger, "f", "FAILED", "boom", NOW, 10)
    items = [found("new2.csv", "n2", 5), found("new1.csv", "n1", 3), found("copy.csv", "n1", 4),
             found("done-again.csv", "d"), found("late.csv", "f")]
    assert [i.name for i in lg.due(ledger, items, NOW)] == ["new1.csv", "new2.csv"]
    later = NOW + timedelta(seconds=11)
    assert [i.name for i in lg.due(ledger, items, later)] == ["late.csv", "new1.csv", "new2.csv"]
    running = lg.mark_running(lg.new_ledger("toy", "/in"), found("a.csv", "a"), "run-a", NOW)
    assert lg.due(running, [found("a.csv", "a")], later) == []
    assert lg.running(running) == [("a", "run-a")]


def test_a_batch_is_done_only_when_its_run_completed_and_failures_back_off() -> None:
    ledger = lg.mark_running(lg.new_ledger("toy", "/in"), found("b.csv", "h"), "run-1", NOW)
    assert ledger.batches["h"].status == "running"
    failed = lg.mark_finished(ledger, "h", "CRASHED", "process killed", NOW, 10)
    record = failed.batches["h"]
    assert record.status == "failed" and record.attempts == 1
    assert datetime.fromisoformat(record.next_try) == NOW + timedelta(seconds=10)
    again = lg.mark_finished(lg.mark_running(failed, found("b.csv", "h"), "run-2", NOW), "h", "FAILED", "x", NOW, 10)
    assert datetime.fromisoformat(again.batches["h"].next_try) == NOW + timedelta(seconds=20)
    done = lg.mark_finished(lg.mark_running(again, found("b.csv", "h"), "run-3", NOW), "h", "COMPLETED", None, NOW, 10)
    record = done.batches["h"]
    assert record.status == "done" and record.next_try is None
    assert [(r.flow_run_id, r.state) for r in record.runs] == [
        ("run-1", "CRASHED"), ("run-2", "FAILED"), ("run-3", "COMPLETED")]
    bad = lg.mark_finished(ledger, "h", "FAILED", "Flow run encountered an exception: InputError: x.csv: ...", NOW, 10)
    assert bad.batches["h"].status == "rejected"
    assert lg.retry_delay(30, 10) == lg.MAX_RETRY_SECONDS


def test_a_run_is_lost_only_after_two_and_a_half_heartbeats_without_a_sign_of_life() -> None:
    assert not lg.is_lost(NOW, [NOW - timedelta(seconds=70), None], 30)
    assert not lg.is_lost(NOW, [NOW - timedelta(seconds=600), NOW - timedelta(seconds=20)], 30)
    assert lg.is_lost(NOW, [NOW - timedelta(seconds=600), NOW - timedelta(seconds=80)], 30)
    assert lg.is_lost(NOW, [None, None], 30)
    assert not lg.is_lost(NOW, [NOW - timedelta(days=1)], None)  # heartbeats off: never


def test_idempotency_keys_name_root_dataset_batch_and_attempt(tmp_path: Path) -> None:
    key = lg.idempotency_key(tmp_path, "toy", "h", 1)
    assert key == lg.idempotency_key(tmp_path, "toy", "h", 1)
    assert len({key, lg.idempotency_key(tmp_path, "toy", "h", 2), lg.idempotency_key(tmp_path / "x", "toy", "h", 1),
                lg.idempotency_key(tmp_path, "toy", "g", 1)}) == 4


def test_seen_entries_follow_the_folder_and_batch_records_stay() -> None:
    ledger = lg.mark_running(lg.new_ledger("toy", "/in"), found("a.csv", "a"), "r", NOW)
    ledger = lg.record_seen(ledger, {"a.csv": ([["/in/a.csv", 1, 1]], "a")})
    assert set(ledger.seen) == {"a.csv"}
    ledger = lg.record_seen(ledger, {})
    assert ledger.seen == {} and "a" in ledger.batches


# ----------------------------------------------------------------------------- files and the ledger file
def test_content_hash_is_the_bytes_not_the_name(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("task,worker,label\nq1,w1,0\n")
    (tmp_path / "b.csv").write_text("task,worker,label\nq1,w1,0\n")
    (tmp_path / "c.csv").write_text("task,worker,label\nq1,w1,1\n")
    digest = {n: ib.content_hash([tmp_path / n], tmp_path / n) for n in ("a.csv", "b.csv", "c.csv")}
    assert digest["a.csv"] == digest["b.csv"] != digest["c.csv"]
    for name in ("f1", "f2"):
        (tmp_path / name / "x").mkdir(parents=True)
        (tmp_path / name / "x" / "night.json").write_text("[0, 1]")
    (tmp_path / "f2" / ".DS_Store").write_text("junk")
    f1, f2 = (ib.content_hash(ib.batch_files(tmp_path / n, []), tmp_path / n) for n in ("f1", "f2"))
    assert f1 == f2
    (tmp_path / "f2" / "x" / "night.json").rename(tmp_path / "f2" / "x" / "day.json")
    assert ib.content_hash(ib.batch_files(tmp_path / "f2", []), tmp_path / "f2") != f1


def test_batch_targets_by_source_kind(tmp_path: Path) -> None:
    from tasks.readers.table import write_table_batch

    (tmp_path / "b.csv").write_text("x")
    (tmp_path / "b.yaml").write_text("source: {kind: table, path: b.csv}\n")
    written = write_table_batch(make_batch(["s"], [2], ["w1"], [0, 1], features=False), tmp_path / "folder")
    (tmp_path / "tracks" / "w1").mkdir(parents=True)
    (tmp_path / "tracks" / "w1" / "night.json").write_text("[0]")
    assert ib.batch_target(tmp_path / "b.csv", "table") == tmp_path / "b.csv"
    assert ib.batch_target(tmp_path / "b.csv", "tracks") is None
    assert ib.batch_target(tmp_path / "b.yaml", "tracks") == tmp_path / "b.yaml"
    (tmp_path / "notes.yaml").write_text("just: notes\n")
    assert ib.batch_target(tmp_path / "notes.yaml", "table") is None
    assert ib.batch_target(tmp_path / "notes.yaml", "mapping") == tmp_path / "notes.yaml"
    assert ib.batch_target(tmp_path / "folder", "demo") == written
    assert ib.batch_target(tmp_path / "tracks", "tracks") == tmp_path / "tracks"
    assert ib.batch_target(tmp_path / "tracks", "table") is None
    (tmp_path / "folder" / "other.yaml").write_text("source: {kind: table, path: labels.parquet}\n")
    with pytest.raises(InputError, match="one YAML batch file"):
        ib.batch_target(tmp_path / "folder", "table")


def test_ledger_round_trip_atomic_write_and_a_corrupt_ledger_is_an_error(tmp_path: Path) -> None:
    path = RootLayout(tmp_path).watch_ledger("toy")
    ledger = lg.mark_running(lg.load_ledger(path, "toy", tmp_path), found("a.csv", "a"), "r", NOW)
    lg.save_ledger(path, ledger)
    assert lg.load_ledger(path, "toy", tmp_path) == ledger
    assert sorted(p.name for p in path.parent.iterdir()) == ["toy.json"]
    path.write_text("{not json")
    with pytest.raises(InputError, match="unreadable"):
        lg.load_ledger(path, "toy", tmp_path)


def test_the_ledgers_temporary_file_never_follows_a_planted_symlink(tmp_path: Path) -> None:
    """Symlinks planted at every name a temporary file beside the ledger could predictably have
    (here to a file outside the folder, and to one that does not exist yet) are left alone: the
    ledger's temporary file is a new file of an unpredictable name, made exclusively."""
    from storage.files import atomic_write

    path = RootLayout(tmp_path / "root").watch_ledger("toy")
    path.parent.mkdir(parents=True)
    victim, absent = tmp_path / "victim.txt", tmp_path / "absent.txt"
    victim.write_bytes(b"not yours")
    planted = {}
    for i, name in enumerate([".toy.json.partial", "toy.json.partial", ".toy.json.tmp", "toy.json.tmp",
                              "toy.json~", ".toy.json.swp", ".toy.json.0.partial"]):
        planted[path.with_name(name)] = victim if i % 2 == 0 else absent
    for link, target in planted.items():
        link.symlink_to(target)
    ledger = lg.mark_running(lg.new_ledger("toy", str(tmp_path)), found("a.csv", "a"), "r", NOW)
    for _ in range(3):
        lg.save_ledger(path, ledger)
    assert victim.read_bytes() == b"not yours" and not absent.exists()
    assert all(link.is_symlink() and link.readlink() == target for link, target in planted.items())
    assert not path.is_symlink() and lg.load_ledger(path, "toy", tmp_path) == ledger
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()  # the mode `open` gives, not mkstemp's 0600
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(["toy.json", *(p.name for p in planted)])

    seen: list[tuple[Path, bool]] = []  # each temporary name is new, and claimed before any write
    for _ in range(3):
        atomic_write(path, lambda tmp: (seen.append((tmp, stat.S_ISREG(tmp.lstat().st_mode))),
                                        tmp.write_bytes(ledger.model_dump_json().encode())))
    assert len({tmp for tmp, _ in seen}) == 3
    assert all(tmp.parent == path.parent and tmp.name.startswith(".toy.json.") and made for tmp, made in seen)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_one_watcher_per_ledger(tmp_path: Path) -> None:
    path = RootLayout(tmp_path).watch_ledger("toy")
    with lg.ledger_lock(path), pytest.raises(InputError, match="another watcher"), lg.ledger_lock(path):
        pass
    with lg.ledger_lock(path):
        pass


def test_a_scan_takes_a_batch_only_once_it_stopped_changing(tmp_path: Path) -> None:
    (tmp_path / "toy.yaml").write_text(TABLE_CONFIG)
    (tmp_path / "labels.csv").write_text("task,worker,label\nq1,w1,0\n")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    watcher = w.Watcher(tmp_path / "toy.yaml", RootLayout(tmp_path / "root"), inbox, 1.0, "reprocess/toy")
    (inbox / "b1.csv").write_text("task,worker,label\nq2,w1,1\n")
    (inbox / ".b2.csv").write_text("task,worker,label\nq3,w1,1\n")
    assert watcher._find() == []
    with (inbox / "b1.csv").open("a") as handle:
        handle.write("q3,w1,0\n")  # still being written
    assert watcher._find() == []
    [item] = watcher._find()
    assert (item.name, item.target) == ("b1.csv", inbox / "b1.csv")
    assert item.digest == ib.content_hash([inbox / "b1.csv"], inbox / "b1.csv")
    # a restarted watcher knows the stable entry from the ledger: no settling scan, no re-hash
    again = w.Watcher(tmp_path / "toy.yaml", RootLayout(tmp_path / "root"), inbox, 1.0, "reprocess/toy")
    assert [i.digest for i in again._find()] == [item.digest]


# ----------------------------------------------------------------------------- serve's checks
def test_serve_without_a_server_says_what_it_needs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.cli import main

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert main(["serve", str(CONFIGS / "bluebirds.yaml"), "--root", str(tmp_path), "--cron", "0 3 * * *"]) == 2
    err = capsys.readouterr().err
    assert "PREFECT_API_URL" in err and "prefect server start --host 127.0.0.1" in err and "ephemeral" in err


def test_serve_refuses_a_bad_cron_and_an_interval_without_a_folder(tmp_path: Path) -> None:
    from flows.serve import check_cron, serve

    with pytest.raises(InputError, match="cron"):
        check_cron("every day")
    with pytest.raises(InputError, match="--watch"):
        serve(CONFIGS / "bluebirds.yaml", tmp_path, interval=5)


# ----------------------------------------------------------------------------- real processes
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(what: str, predicate: Callable[[], Any], timeout: float, poll: float = 0.5,
             proc: subprocess.Popen | None = None, log: Path | None = None) -> Any:
    """Poll until `predicate()` is truthy; fail after `timeout` s or when `proc` exits."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(poll)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{tail}")


def stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Signal the process group we started, then SIGKILL it if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


@contextmanager
def prefect_server(folder: Path) -> Iterator[str]:
    """A real `prefect server start` on a free loopback port with its own PREFECT_HOME."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(folder / "prefect-server"), "PREFECT_UI_ENABLED": "false",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log = folder / "server.log"
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        wait_for("the Prefect server", healthy, 90, proc=proc, log=log)
        yield url
    finally:
        stop(proc)


def start_serve(url: str, root: Path, inbox: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_API_URL": url, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve", str(CONFIGS / "bluebirds.yaml"), "--root", str(root),
         "--cron", "0 3 * * *", "--watch", str(inbox), "--interval", "1"],
        cwd=PROJECT, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True)


def ledger_status(root: Path, name: str) -> str | None:
    path = RootLayout(root).watch_ledger("bluebirds")
    if not path.exists():
        return None
    ledger = json.loads(path.read_text())
    return next((r["status"] for r in ledger["batches"].values() if r.get("name") == name), None)


def store_batches(root: Path) -> int:
    from storage.dataset_store import DatasetStore

    return DatasetStore.open(RootLayout(root).dataset_uri("bluebirds")).batch_count


def write_batch(path: Path, labels: dict[int, dict[int, bool]]) -> None:
    """A bluebirds-format batch (annotator -> item -> label), moved in whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(labels))
    tmp.rename(path)


@pytest.mark.slow
def test_watched_batches_run_once_also_across_a_serve_restart(tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root, inbox, log = tmp_path / "root", tmp_path / "inbox", tmp_path / "serve.log"
    inbox.mkdir()
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    serve = None
    with prefect_server(tmp_path) as url, temporary_settings({PREFECT_API_URL: url}), \
            get_client(sync_client=True) as client:
        timings["server ready"] = time.monotonic() - t0
        try:
            serve = start_serve(url, root, inbox, log)

            def deployment(name: str) -> Any:
                try:
                    return client.read_deployment_by_name(name)
                except Exception:
                    return None

            pipeline = wait_for("the pipeline deployment", lambda: deployment("pipeline/bluebirds"), 90,
                                proc=serve, log=log)
            [schedule] = pipeline.schedules
            assert schedule.schedule.cron == "0 3 * * *" and schedule.active and not pipeline.paused
            assert pipeline.parameters["trigger"] == "schedule"
            reprocess = wait_for("the reprocess deployment", lambda: deployment("reprocess/bluebirds"), 30)

            def runs_of(dep: Any, state: str | None = None) -> list[Any]:
                runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))
                return [r for r in runs if state is None or r.state_name == state]

            # the server's scheduler (not the ephemeral API) creates the cron runs
            wait_for("scheduled cron runs", lambda: runs_of(pipeline, "Scheduled"), 30)
            run = run_deployment("pipeline/bluebirds", timeout=240, poll_interval=1, as_subflow=False)
            assert run.state.is_completed(), run.state
            assert store_batches(root) == 1
            timings["pipeline run"] = time.monotonic() - t0

            write_batch(inbox / "b1.yaml", {39: {99001: True, 99002: False}, 40: {99001: True, 99002: True}})
            wait_for("b1 done", lambda: ledger_status(root, "b1.yaml") == "done", 150, proc=serve, log=log)
            b1_runs = {r.id: r for r in runs_of(reprocess)}
            assert [r.state_name for r in b1_runs.values()] == ["Completed"]
            assert all(r.parameters["batch_path"] == str(inbox / "b1.yaml") and
                       r.parameters["trigger"] == "new-batch" for r in b1_runs.values())
            assert store_batches(root) == 2
            timings["b1 reprocessed"] = time.monotonic() - t0

            stop(serve, signal.SIGKILL)  # a crash: nothing gets to clean up
            serve = start_serve(url, root, inbox, log)
            write_batch(inbox / "b1-copy.yaml", yaml.safe_load((inbox / "b1.yaml").read_text()))
            (inbox / ".b3.yaml").write_text("39: {99030: true}\n")
            (inbox / "b4.yaml.part").write_text("39: {99040: true}\n")
            write_batch(inbox / "b2.yaml", {39: {99020: True, 99021: False}})
            wait_for("b2 done", lambda: ledger_status(root, "b2.yaml") == "done", 150, proc=serve, log=log)
            timings["b2 reprocessed after the restart"] = time.monotonic() - t0

            after = runs_of(reprocess)
            new = [r for r in after if r.id not in b1_runs]
            assert {r.parameters["batch_path"] for r in new} == {str(inbox / "b2.yaml")}, "b1 ran again"
            assert [r.state_name for r in new] == ["Completed"]
            assert store_batches(root) == 3
            ledger = json.loads(RootLayout(root).watch_ledger("bluebirds").read_text())
            assert sorted(r["name"] for r in ledger["batches"].values()) == ["b1.yaml", "b2.yaml"]
            assert ledger["seen"]["b1-copy.yaml"]["digest"] == ledger["seen"]["b1.yaml"]["digest"]
            assert {".b3.yaml", "b4.yaml.part"}.isdisjoint(ledger["seen"])
            print(f"\nreprocess runs: b1 {len(b1_runs)}, b2 {len(new)}; timings (s from start): "
                  + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
        finally:
            stop(serve)

        # the work-pool form: the same deployments on a process pool, with the root's environment
        from prefect.client.schemas.actions import WorkPoolCreate

        from flows.serve import deploy

        client.create_work_pool(WorkPoolCreate(name="annostyle-test", type="process"))
        summary = deploy(CONFIGS / "bluebirds.yaml", root, "annostyle-test", cron="0 4 * * *")
        pooled = client.read_deployment_by_name("pipeline/bluebirds")
        assert pooled.work_pool_name == "annostyle-test" and pooled.schedules[0].schedule.cron == "0 4 * * *"
        env = pooled.job_variables["env"]
        # what flows.settings gives a run (values already in this process's environment win)
        assert env["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] == os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"]
        assert "MPLCONFIGDIR" in env and "PREFECT_HOME" not in env
        assert summary.deployments == ["pipeline/bluebirds", "reprocess/bluebirds"]
