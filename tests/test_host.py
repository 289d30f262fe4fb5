"""The root's command host (flows.host): commands run in a fork of it with their own stdio,
directory and environment; a SIGKILLed or interrupted command leaves nothing of its own behind;
a host of other code is replaced, another environment runs the command in its own process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PROJECT, processes_of

from storage.layout import RootLayout

CONFIGS = PROJECT / "configs"
HOSTED = "running in the root's command host"


def user_env(**extra: str) -> dict[str, str]:
    """A user's shell: none of the test session's Prefect, MLflow or scratch settings."""
    drop = ("MPLCONFIGDIR", "DASK_TEMPORARY_DIRECTORY", "MLFLOW_TRACKING_URI")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ANNOSTYLE_")) and k not in drop}
    return {**env, **extra}


def command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", *argv]


def annostyle(*argv: str, cwd: Path = PROJECT, timeout: float = 600, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(*argv), cwd=cwd, env=user_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def last_json(done: subprocess.CompletedProcess[str]) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def children_of(pid: int) -> set[int]:
    """Live (not zombie) processes whose parent is `pid`."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
                found.add(int(entry.name))
    return found


def wait_for(condition, timeout: float = 300, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return False


@pytest.mark.slow
def test_commands_run_in_the_host_with_their_own_directory_and_output_and_match_a_run_here(tmp_path: Path) -> None:
    root = tmp_path / "root"
    layout = RootLayout(root)
    config = tmp_path / "bluebirds.yaml"  # named relative to the command's directory, which the child must use
    text = (CONFIGS / "bluebirds.yaml").read_text().replace("../../shared", str(PROJECT.parent / "shared"))
    config.write_text(text)
    try:
        first = annostyle("run", config.name, "--root", str(root), "--json", cwd=tmp_path)
        summary = last_json(first)
        host = json.loads(layout.host_state.read_text())
        assert HOSTED in first.stderr
        assert summary["stages"]["ingest"]["status"] == "ran" and summary["root"] == str(layout.root)

        again = annostyle("run", config.name, "--root", str(root), "--json", cwd=tmp_path)
        assert HOSTED in again.stderr and last_json(again)["stages"]["analyze"]["status"] == "reused"
        assert json.loads(layout.host_state.read_text())["pid"] == host["pid"], "the host was reused"

        here = annostyle("run", config.name, "--root", str(root), "--json", cwd=tmp_path, ANNOSTYLE_HOST="off")
        assert HOSTED not in here.stderr
        assert last_json(here)["version"] == summary["version"]

        # another environment (a variable the imported libraries may read) runs in its own process
        threads = "3" if user_env().get("OMP_NUM_THREADS") != "3" else "4"  # not what the host was started with
        other = annostyle("ingest", config.name, "--root", str(root), "--json", cwd=tmp_path, OMP_NUM_THREADS=threads)
        assert HOSTED not in other.stderr and "another environment" in other.stderr
        assert last_json(other)["batch_status"] == "unchanged"

        # a bad config is refused before anything starts on a fresh root
        fresh = tmp_path / "fresh"
        bad = tmp_path / "bad.yaml"
        bad.write_text(text + "\nno_such_section: 1\n")
        refused = annostyle("run", str(bad), "--root", str(fresh))
        assert refused.returncode == 2 and "no_such_section" in refused.stderr and "Traceback" not in refused.stderr
        assert not RootLayout(fresh).server_state.exists() and not RootLayout(fresh).host_state.exists()
    finally:
        stopped = annostyle("server", "stop", "--root", str(root), "--json")
    assert last_json(stopped)["host_pid"] == host["pid"]
    assert processes_of(root) == set()


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def interrupt(argv: list[str], layout: RootLayout, how: signal.Signals) -> tuple[subprocess.Popen, str, int]:
    """Start a command, signal it once its child in the host works on the flow; the process, its
    stderr and the child's pid."""
    proc = subprocess.Popen(argv, cwd=PROJECT, env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert wait_for(lambda: layout.host_state.exists() or proc.poll() is not None)
    host = json.loads(layout.host_state.read_text())["pid"]
    assert wait_for(lambda: children_of(host) or proc.poll() is not None)
    [child] = children_of(host)
    assert wait_for(lambda: Path(layout.dataset_uri("demo")).exists() or proc.poll() is not None)
    time.sleep(1.0)  # into the flow's work
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    proc.send_signal(how)
    _, err = proc.communicate(timeout=120)
    return proc, err, child


@pytest.mark.slow
def test_a_killed_or_interrupted_command_takes_its_child_in_the_host_with_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    layout = RootLayout(root)
    single = command("run", str(CONFIGS / "demo.yaml"), "--root", str(root))
    # two datasets side by side: Ctrl-C ends the command at once, not when its lanes end
    lanes = command("run", str(CONFIGS / "demo.yaml"), str(CONFIGS / "wsd.yaml"), "--jobs", "2",
                    "--root", str(root), "--force", "train")
    try:
        for argv, how in ((single, signal.SIGKILL), (single, signal.SIGINT), (lanes, signal.SIGINT)):
            proc, err, child = interrupt(argv, layout, how)
            assert wait_for(lambda child=child: not alive(child), timeout=10), "the command's child outlived it"
            shared = {json.loads(path.read_text())["pid"] for path in (layout.server_state, layout.host_state)}
            assert processes_of(root) == shared, "only the shared server and host may outlive a command"
            if how == signal.SIGKILL:
                assert proc.returncode == -signal.SIGKILL
            else:
                assert proc.returncode == 130 and "KeyboardInterrupt" in err, err[-3000:]
    finally:
        annostyle("server", "stop", "--root", str(root))
    assert processes_of(root) == set()


@pytest.mark.slow
def test_a_host_of_other_code_is_replaced_and_hosting_off_starts_none(tmp_path: Path, monkeypatch) -> None:
    import flows.server as server

    root = tmp_path / "root"
    layout = RootLayout(root)
    off = last_json(annostyle("server", "start", "--root", str(root), "--json", ANNOSTYLE_HOST="off"))
    assert off["host_pid"] is None and not layout.host_state.exists()
    started = last_json(annostyle("server", "start", "--root", str(root), "--json"))
    try:
        assert started["status"] == "running" and started["host_pid"] is not None
        old = started["host_pid"]
        for key, value in user_env().items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr(server, "code_version", lambda: "other code")
        replaced = server.ensure(layout, 0.0, host=True)
        assert replaced.host_pid not in (None, old) and not Path(f"/proc/{old}").exists()
    finally:
        annostyle("server", "stop", "--root", str(root))
    assert processes_of(root) == set()


def test_the_host_preloads_without_starting_a_thread() -> None:
    """A fork copies only the calling thread: the host's imports must start none (a library that
    did would leave its children with a half-copied thread's locks)."""
    code = ("import threading, flows.host as h; failed = h.preload(); "
            "print(len(failed), threading.active_count(), [t.name for t in threading.enumerate()])")
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, env=user_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[:2] == ["0", "1"], done.stdout
