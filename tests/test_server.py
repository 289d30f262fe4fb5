"""The root's shared Prefect server (flows.server): started once, reused, a stale one replaced,
two commands never start two, `annostyle server stop` stops it; and `import flows.cli` is light."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import PROJECT

from storage.layout import RootLayout

HEAVY = ("torch", "mlflow", "umap", "dask", "matplotlib", "prefect", "sklearn", "numba", "zarr")


def user_env() -> dict[str, str]:
    """A user's shell: none of the test session's Prefect, MLflow or scratch settings."""
    drop = ("MPLCONFIGDIR", "DASK_TEMPORARY_DIRECTORY", "MLFLOW_TRACKING_URI")
    return {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ANNOSTYLE_")) and k not in drop}


def annostyle(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flows.cli", *argv], cwd=PROJECT, env=user_env(),
                          capture_output=True, text=True, timeout=timeout)


def server_json(*argv: str) -> dict:
    done = annostyle("server", *argv, "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not alive(pid)


def answers(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def test_importing_the_command_line_loads_no_heavy_library() -> None:
    """`annostyle --help` and argument errors stay fast: the CLI module imports none of them."""
    code = f"import sys, flows.cli; print([m for m in {HEAVY!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    bad = annostyle("run", "configs/bluebirds.yaml", "--no-such-option", timeout=120)
    assert bad.returncode == 2 and "--no-such-option" in bad.stderr


@pytest.mark.slow
def test_one_server_per_root_reused_replaced_when_stale_and_stopped(tmp_path: Path) -> None:
    root = tmp_path / "root"
    layout = RootLayout(root)
    assert server_json("status", "--root", str(root))["status"] == "not running"
    try:
        first = server_json("start", "--root", str(root))
        assert first["status"] == "started" and alive(first["pid"]) and answers(first["api_url"])
        assert first["api_url"].startswith("http://127.0.0.1:")
        again = server_json("start", "--root", str(root))
        assert (again["status"], again["pid"]) == ("running", first["pid"])
        assert server_json("status", "--root", str(root))["pid"] == first["pid"]
        assert json.loads(layout.server_state.read_text())["pid"] == first["pid"]

        stopped = server_json("stop", "--root", str(root))
        assert stopped["status"] == "stopped" and not alive(first["pid"]) and not answers(first["api_url"])
        assert not layout.server_state.exists()
        assert server_json("stop", "--root", str(root))["status"] == "not running"

        # a stale record (its process is gone, its port answers nothing) is noticed and replaced;
        # two commands starting together start one server: one starts it, the other reuses it
        port = int(first["api_url"].rsplit(":", 1)[1].split("/")[0])
        layout.server_state.write_text(json.dumps({
            "pid": first["pid"], "port": port, "root": str(layout.root), "started_at": first["started_at"],
            "idle_minutes": 0.0, "prefect_version": "3.8.8"}))
        starts = [subprocess.Popen([sys.executable, "-m", "flows.cli", "server", "start", "--root", str(root),
                                    "--json"], cwd=PROJECT, env=user_env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outs = []
        for proc in starts:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-3000:]
            outs.append(json.loads(out.strip().splitlines()[-1]))
        assert sorted(o["status"] for o in outs) == ["running", "started"]
        assert outs[0]["pid"] == outs[1]["pid"] != first["pid"] and answers(outs[0]["api_url"])
    finally:
        done = annostyle("server", "stop", "--root", str(root))
        assert done.returncode == 0, done.stderr
    assert not alive(outs[0]["pid"]) and not layout.server_state.exists()


@pytest.mark.slow
def test_a_server_with_an_idle_limit_stops_itself_once_no_command_holds_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    layout = RootLayout(root)
    started = server_json("start", "--root", str(root), "--idle-minutes", "0.05")  # 3 s
    try:
        assert started["status"] == "started" and started["idle_minutes"] == 0.05 and alive(started["host_pid"])
        holder = subprocess.Popen(  # a command using the server holds the users lock: no stop meanwhile
            [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
             "fcntl.flock(f, fcntl.LOCK_SH); print('held', flush=True); time.sleep(8)", str(layout.server_users)],
            stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        time.sleep(6)
        assert alive(started["pid"]) and answers(started["api_url"])
        holder.wait(30)
        deadline = time.monotonic() + 60
        while alive(started["pid"]) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not alive(started["pid"]), "the idle server should have stopped itself"
        assert wait_gone(started["host_pid"]), "the command host stops with the server"
        assert not layout.server_state.exists()
        assert server_json("status", "--root", str(root))["status"] == "not running"
    finally:
        annostyle("server", "stop", "--root", str(root))
