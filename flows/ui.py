"""`annostyle ui`: the MLflow UI on 127.0.0.1 for a root's tracking store, until Ctrl-C."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request

from errors import InputError
from storage.layout import RootLayout
from storage.results.runs import UiResult


def server_command(layout: RootLayout, port: int, host: str = "127.0.0.1") -> list[str]:
    """`mlflow server` on the root's SQLite store and artifact folder, one worker."""
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", layout.local_tracking_uri,
            "--artifacts-destination", str(layout.mlflow_artifacts), "--host", host, "--port", str(port),
            "--workers", "1"]


def server_env() -> dict[str, str]:
    """The lean settings: no job processes, no telemetry."""
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 90.0) -> None:
    """Block until `url`/health answers; raise if the server exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"mlflow server not ready at {url} after {timeout:.0f} s")


def stop(process: subprocess.Popen, timeout: float = 20.0) -> int:
    """SIGTERM to the server's process group (it leads its own), SIGKILL if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


def cli_run(args: argparse.Namespace) -> UiResult:
    layout = RootLayout(args.root)
    root = layout.root
    if not layout.mlflow_db.exists():
        raise InputError(str(root), None, layout.mlflow_db.name,
                         "no tracking store here yet: run `annostyle run CONFIG` first")
    url = f"http://127.0.0.1:{args.port}"
    # its own session: Ctrl-C reaches only this process, which then stops the whole server group
    process = subprocess.Popen(server_command(layout, args.port), env=server_env(), start_new_session=True,
                               stdout=subprocess.DEVNULL)
    try:
        wait_ready(url, process)
        print(f"MLflow UI for {root}: {url}  (Ctrl-C stops it)", flush=True)
        process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        code = stop(process)
    return UiResult(url=url, root=str(root), stopped=True, server_exit_code=code)


def cli_print(result: UiResult) -> None:
    print(f"MLflow UI at {result.url} stopped")
