"""`annostyle ui`: the MLflow UI on 127.0.0.1 for a root's tracking store, until Ctrl-C or SIGTERM.

The server runs in a process group of its own; either signal stops that whole group."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from types import FrameType

from errors import InputError
from storage.layout import RootLayout
from storage.results.runs import UiResult
from storage.tracking import ensure_store

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
"""Signals that stop the UI as Ctrl-C does (SIGINT arrives as KeyboardInterrupt)."""


class Stopped(Exception):
    """A stop signal arrived: leave the wait and stop the server group."""


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signal.Signals(signum).name)


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
    ensure_store(layout, layout.local_tracking_uri)  # a first run still making the schema finishes first
    url = f"http://127.0.0.1:{args.port}"
    previous = {signal.SIGINT: signal.getsignal(signal.SIGINT)}
    previous.update({sig: signal.signal(sig, _raise_stopped) for sig in STOP_SIGNALS})
    process: subprocess.Popen | None = None
    code: int | None = None
    try:
        # its own session: a signal reaches only this process, which then stops the whole server group
        process = subprocess.Popen(server_command(layout, args.port), env=server_env(),
                                   start_new_session=True, stdout=subprocess.DEVNULL)
        wait_ready(url, process)
        print(f"MLflow UI for {root}: {url}  (Ctrl-C or SIGTERM stops it)", flush=True)
        process.wait()
    except (KeyboardInterrupt, Stopped):
        pass
    finally:
        for sig in previous:  # a second signal must not cut the stop short
            signal.signal(sig, signal.SIG_IGN)
        try:
            if process is not None:
                code = stop(process)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return UiResult(url=url, root=str(root), stopped=True, server_exit_code=code)


def cli_print(result: UiResult) -> None:
    print(f"MLflow UI at {result.url} stopped")
