"""`annostyle serve`: the pipeline on a cron schedule, and one reprocess run per new batch.

This process serves two deployments (Prefect `serve`, one flow run at a time, so a scheduled
pipeline run and a batch never write the same stores at once):
- `pipeline/<dataset>`: `pipeline_flow(trigger="schedule")` on `--cron` (without it: on demand,
  `prefect deployment run pipeline/<dataset>`);
- `reprocess/<dataset>`: `reprocess_flow(trigger="new-batch")`, given `batch_path` per run.
With `--watch DIR` a watcher thread scans DIR every `--interval` seconds and creates one
`reprocess/<dataset>` run per new batch (what a batch is: tasks.inbox; the ledger: tasks.ledger).

Why a polling thread that calls `run_deployment`, not a scan deployment on an interval schedule:
Prefect has no file-system trigger, and a scan flow run every few seconds would fill the UI with
empty runs and start a Python process per scan. Here scanning is a cheap loop, and Prefect does
what it is good at: each real batch becomes one visible, parameterised, retryable flow run,
executed by whoever serves the deployment (this process, or a worker), and its final state is
what the watcher's ledger records.

Ctrl-C or SIGTERM stops it: a run in flight is cancelled (its batch is retried on the next start)
and the deployments' schedules are paused until they are served again.

Schedules never fire on Prefect's ephemeral API, so serving needs a running Prefect server: the
root's shared one (`annostyle server start`, flows.server), which the command line finds by
itself, or `prefect server start --host 127.0.0.1` and `PREFECT_API_URL=http://127.0.0.1:4200/api`.

For a work pool instead of `serve` (flows run by `prefect worker start`):
    annostyle deploy CONFIG --pool POOL [--cron EXPR] [--root DIR]
    annostyle watch CONFIG --watch DIR [--interval S] [--root DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from configs.schema import load_config
from errors import InputError
from flows.settings import HEARTBEAT_ENV, heartbeat_setting
from flows.watch import Watcher
from storage.layout import RootLayout
from storage.results.serve import DeployResult, ServeResult, WatchResult
from tasks.ledger import ledger_lock

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 10.0
DEFAULT_HEARTBEAT = 30  # seconds between a flow run's heartbeats (Prefect's default: 180, minimum: 30)
NEEDS_SERVER = ("schedules never fire on Prefect's ephemeral API, so `annostyle serve` needs a running "
                "Prefect server: start the root's with `annostyle server start --root ROOT` (then it is "
                "found by itself), or start one with `prefect server start --host 127.0.0.1` and set "
                "PREFECT_API_URL=http://127.0.0.1:4200/api")


def deployment_names(dataset: str) -> dict[str, str]:
    """The deployments served for a dataset, as `flow/deployment` names."""
    return {"pipeline": f"pipeline/{dataset}", "reprocess": f"reprocess/{dataset}"}


def require_server() -> str:
    """The Prefect API URL, after checking a server answers there; else a clear InputError."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise InputError("PREFECT_API_URL", None, None, NEEDS_SERVER)
    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        raise InputError("PREFECT_API_URL", None, url, f"no Prefect server answers there ({problem}); {NEEDS_SERVER}")
    return url


def check_cron(expr: str | None) -> None:
    """A bad cron expression fails before anything is served."""
    if expr is None:
        return
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=expr)
    except ValueError as err:
        raise InputError("--cron", None, expr, f"not a valid cron expression ({err})") from err


def build_deployments(config_path: Path, root: Path, dataset: str, cron: str | None,
                      env: dict[str, str] | None = None) -> list[Any]:
    """The pipeline (on `cron`) and reprocess deployments (Prefect `RunnerDeployment`s); `env`
    becomes a work pool's job env."""
    from prefect.deployments.runner import EntrypointType

    from flows.pipeline import pipeline_flow
    from flows.reprocess import reprocess_flow

    common = {"config_path": str(config_path), "root": str(root)}
    tags, job = ["annostyle", dataset], {"env": env} if env else None
    return [
        pipeline_flow.to_deployment(
            name=dataset, cron=cron, parameters={**common, "trigger": "schedule"},
            description=f"annostyle pipeline for {dataset} (config {config_path}, root {root})",
            entrypoint_type=EntrypointType.MODULE_PATH, tags=tags, job_variables=job),
        reprocess_flow.to_deployment(
            name=dataset, parameters={**common, "trigger": "new-batch"},
            description=f"annostyle reprocess of one new {dataset} batch (pass batch_path)",
            entrypoint_type=EntrypointType.MODULE_PATH, tags=tags, job_variables=job),
    ]


def run_env(root: Path) -> dict[str, str]:
    """The environment a flow run under `root` needs (flows.settings), for a work pool's job variables.

    Keys are those `apply_defaults` sets (asked of a clean interpreter); values are this process's,
    where set. PREFECT_HOME and server settings stay out: the worker's own API settings apply.
    """
    code = ("import json, os, sys; from pathlib import Path; from flows.settings import apply_defaults; "
            "apply_defaults(Path(sys.argv[1])); print(json.dumps(dict(os.environ)))")
    done = subprocess.run([sys.executable, "-c", code, str(root)], env={}, capture_output=True, text=True,
                          check=True, cwd=Path(__file__).resolve().parent.parent)
    defaults: dict[str, str] = json.loads(done.stdout)
    skip = ("PREFECT_HOME", "PREFECT_SERVER", "PREFECT_UI", "LC_CTYPE")
    return {k: os.environ.get(k, v) for k, v in defaults.items() if not k.startswith(skip)}


def heartbeat_seconds() -> int:
    """Flow runs' heartbeat period, also set in the environment their processes inherit: a run
    that misses 2.5 periods is taken for lost by the watcher (see flows.watch)."""
    value = heartbeat_setting()
    seconds = int(value) if value else DEFAULT_HEARTBEAT
    os.environ[HEARTBEAT_ENV] = str(seconds)
    return seconds


def _watcher(config_path: Path, layout: RootLayout, folder: Path, interval: float, dataset: str) -> Watcher:
    if not folder.is_dir():
        raise InputError(folder, "--watch", str(folder), "the watched folder does not exist")
    return Watcher(config_path, layout, folder, interval, deployment_names(dataset)["reprocess"],
                   heartbeat=heartbeat_seconds())


def _ledger_counts(watcher: Watcher | None) -> dict[str, int]:
    return dict(Counter(r.status for r in watcher.ledger.batches.values())) if watcher else {}


def serve(config_path: Path, root: Path, cron: str | None = None, watch: Path | None = None,
          interval: float | None = None) -> ServeResult:
    """Serve both deployments (and watch a folder) until interrupted; returns what was served."""
    config_path = Path(config_path).resolve()
    config = load_config(config_path)
    layout, dataset = RootLayout(Path(root), config.store.uri_prefix), config.name
    if interval is not None and watch is None:
        raise InputError("--interval", None, interval, "--interval sets how often --watch scans: give --watch too")
    check_cron(cron)
    url = require_server()
    deployments = build_deployments(config_path, layout.root, dataset, cron)
    result = ServeResult(dataset=dataset, api_url=url, cron=cron, deployments=list(deployment_names(dataset).values()),
                         watch=str(Path(watch).resolve()) if watch else None,
                         ledger=str(layout.watch_ledger(dataset)) if watch else None)
    watcher, stop = None, threading.Event()
    with ledger_lock(layout.watch_ledger(dataset)) if watch else contextlib.nullcontext():
        if watch:
            watcher = _watcher(config_path, layout, Path(watch).resolve(), interval or DEFAULT_INTERVAL, dataset)
        for deployment in deployments:  # registered before the watcher asks for runs of them
            deployment.apply()
        log.info("serving %s on %s%s%s", ", ".join(result.deployments), url,
                 f"; pipeline on cron {cron!r}" if cron else "; pipeline on demand (no --cron)",
                 f"; watching {watch}" if watch else "")
        thread = None
        if watcher:
            thread = threading.Thread(target=watcher.run, args=(stop,), name="annostyle-watch", daemon=True)
            thread.start()
        try:
            run_served(deployments, heartbeat_seconds())
        finally:
            stop.set()
            if thread:
                thread.join(timeout=30)
    result.batches = _ledger_counts(watcher)
    return result


def run_served(deployments: list[Any], heartbeat: int) -> None:
    """`prefect.serve(*deployments, limit=1)`, but SIGTERM stops it as Ctrl-C does.

    Prefect 3.8's own SIGTERM handler exits without stopping the runner, which leaves a run in
    flight marked Running with its process gone; here the runner stops properly: it cancels the
    run in flight (Cancelled, so the watcher retries its batch) and pauses the schedules.
    """
    from prefect.runner import Runner

    runner = Runner(limit=1, pause_on_shutdown=True, heartbeat_seconds=heartbeat)
    for deployment in deployments:
        runner.add_deployment(deployment)

    async def main() -> None:
        task = asyncio.ensure_future(runner.start())
        await asyncio.sleep(0)  # start() has installed Prefect's SIGTERM handler: replace it

        def stop() -> None:
            if runner.started and not runner.stopping:
                log.info("stopping: a run in flight is cancelled (its batch is retried on the next start)")
                asyncio.ensure_future(runner.astop())
            else:
                task.cancel()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())


def deploy(config_path: Path, root: Path, pool: str, cron: str | None = None) -> DeployResult:
    """Create both deployments on a process work pool, for `prefect worker start --pool POOL`."""
    from prefect.deployments.runner import deploy as prefect_deploy

    config_path, root = Path(config_path).resolve(), RootLayout(Path(root)).root
    dataset = load_config(config_path).name
    check_cron(cron)
    url = require_server()
    deployments = build_deployments(config_path, root, dataset, cron,
                                    env={**run_env(root), HEARTBEAT_ENV: str(heartbeat_seconds())})
    try:
        ids = prefect_deploy(*deployments, work_pool_name=pool, build=False, push=False,
                             print_next_steps_message=False, ignore_warnings=True)
    except ValueError as err:
        raise InputError("--pool", None, pool, str(err)) from err
    return DeployResult(dataset=dataset, api_url=url, pool=pool, cron=cron,
                        deployments=list(deployment_names(dataset).values()), ids=[str(i) for i in cast("list[UUID]", ids)])


def watch_only(config_path: Path, root: Path, folder: Path, interval: float | None) -> WatchResult:
    """Run the watcher alone (deployments on a work pool run the batches) until interrupted."""
    config_path = Path(config_path).resolve()
    config = load_config(config_path)
    layout, dataset = RootLayout(Path(root), config.store.uri_prefix), config.name
    require_server()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with ledger_lock(layout.watch_ledger(dataset)):
        watcher = _watcher(config_path, layout, Path(folder).resolve(), interval or DEFAULT_INTERVAL, dataset)
        try:
            watcher.run(stop)
        except KeyboardInterrupt:
            stop.set()
    return WatchResult(dataset=dataset, watch=str(folder), ledger=str(watcher.path), batches=_ledger_counts(watcher))


def cli_run(args: argparse.Namespace) -> ServeResult | DeployResult | WatchResult:
    """`annostyle serve`, `annostyle deploy` and `annostyle watch` (all three live here)."""
    if args.command == "deploy":
        return deploy(Path(args.config), args.root, args.pool, args.cron)
    if args.command == "watch":
        return watch_only(Path(args.config), args.root, args.watch, args.interval)
    return serve(Path(args.config), args.root, cron=args.cron, watch=args.watch, interval=args.interval)


def _counts(batches: dict[str, int]) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(batches.items())) or "none"


def cli_print(result: ServeResult | DeployResult | WatchResult) -> None:
    if isinstance(result, DeployResult):
        print(f"deployed {', '.join(result.deployments)} on work pool {result.pool} ({result.api_url})"
              + (f"; pipeline on cron {result.cron!r}" if result.cron else ""))
    elif isinstance(result, WatchResult):
        print(f"stopped watching {result.watch}: batches {_counts(result.batches)}; ledger {result.ledger}")
    else:
        print(f"stopped serving {', '.join(result.deployments)} ({result.api_url})")
        if result.watch:
            print(f"  watched {result.watch}: batches {_counts(result.batches)}; ledger {result.ledger}")
