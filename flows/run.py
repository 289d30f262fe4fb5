"""`annostyle run CONFIG [CONFIG ...]`: the pipeline of one dataset, or of several in one process.

One config runs `pipeline_flow` as before. Several run in one Prefect flow (`pipelines`) that
calls the pipeline's body once per config: the process pays its imports, its Prefect API
connection and its MLflow store opening once, and every dataset still gets its own MLflow parent
run with its nested stage runs (and its cached stages, keyed as in a single run). `--jobs N`
runs N datasets side by side (default 1: one after another, in the order given); the first
dataset that fails stops those not yet started, and the ones that ran stay recorded.
`--probe NAME` runs the probe flow's body for that dataset after its pipeline, in its lane.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar, cast

from prefect import flow

from configs.schema import load_config
from flows.pipeline import cli_print as print_pipeline
from flows.pipeline import pipeline_flow
from flows.settings import DATASET
from storage.results.multi import DatasetRun, MultiPipelineResult
from storage.results.pipeline import PipelineResult
from tasks.workers import shared_threads, usable_cores

log = logging.getLogger(__name__)
T = TypeVar("T")


@flow(name="pipelines", validate_parameters=False)
def pipelines_flow(config_paths: list[str], root: str, force: list[str] | None = None,
                   scheduler: str | None = None, trigger: str = "manual", jobs: int = 1,
                   probe: list[str] | None = None) -> MultiPipelineResult:
    """Every config's pipeline in this one flow run, `jobs` at a time; then, for the datasets
    named in `probe`, the representation probe.

    Side by side, the datasets share the process's thread pools (torch's, BLAS): each gets the
    usable cores divided by `jobs`, whatever its `train.threads` says (seed and probe worker
    processes keep theirs)."""
    started = time.perf_counter()

    def one(i: int, config_path: str) -> DatasetRun:
        name = load_config(config_path).name
        DATASET.set(name)  # this lane's log lines name their dataset
        log.info("dataset %d of %d: %s", i, len(config_paths), config_path)
        t0 = time.perf_counter()
        result = pipeline_flow.fn(config_path=config_path, root=root, force=force, scheduler=scheduler,
                                  trigger=trigger)
        probed = None
        if name in (probe or []):
            from flows.probe import probe_flow  # torch and the probes' libraries: only when asked

            probed = probe_flow.fn(config_path=config_path, root=root)
        return DatasetRun(config=config_path, seconds=round(time.perf_counter() - t0, 3), result=result,
                          probe=probed)

    calls = [lambda i=i, c=c: one(i, c) for i, c in enumerate(config_paths, 1)]
    pools = shared_threads(max(1, usable_cores() // jobs)) if jobs > 1 else contextlib.nullcontext()
    with pools:
        runs = side_by_side(calls, jobs)
    return MultiPipelineResult(runs=runs, seconds=round(time.perf_counter() - started, 3), root=root, jobs=jobs)


def side_by_side(calls: Sequence[Callable[[], T]], jobs: int) -> list[T]:
    """The calls, `jobs` at a time in the order given, each in a thread that carries this
    thread's context (the Prefect flow run, so the task runs inside are this flow's, as in
    Prefect's thread-pool task runner); the results in order. The first failure stops the calls
    not yet started and is raised once the running ones end.

    The threads are daemons, unlike a task runner's: on Ctrl-C the command exits at once (exit
    130) instead of waiting for every running dataset to finish; what a stage had committed is
    kept, and a rerun resumes (as after a kill)."""
    results: list[T | None] = [None] * len(calls)
    errors: list[BaseException | None] = [None] * len(calls)
    queue = iter(range(len(calls)))
    lock, stop = threading.Lock(), threading.Event()

    def lane() -> None:
        while not stop.is_set():
            with lock:
                i = next(queue, None)
            if i is None:
                return
            try:
                results[i] = calls[i]()
            except BaseException as exc:  # noqa: BLE001 - raised again by the caller's thread
                errors[i] = exc
                stop.set()

    lanes = [threading.Thread(target=contextvars.copy_context().run, args=(lane,), daemon=True,
                              name=f"annostyle-lane-{k}") for k in range(min(jobs, len(calls)))]
    for thread in lanes:
        thread.start()
    for thread in lanes:
        thread.join()
    failed = next((e for e in errors if e is not None), None)
    if failed is not None:
        raise failed
    return cast(list[T], results)  # no failure: every call ran


def cli_run(args: argparse.Namespace) -> PipelineResult | MultiPipelineResult:
    configs = [str(Path(c).resolve()) for c in args.configs]
    root = str(args.root.resolve())
    if len(configs) == 1 and not args.probe:
        return pipeline_flow(config_path=configs[0], root=root, force=args.force, scheduler=args.scheduler)
    return pipelines_flow(config_paths=configs, root=root, force=args.force, scheduler=args.scheduler,
                          jobs=args.jobs, probe=args.probe)


def cli_print(result: PipelineResult | MultiPipelineResult) -> None:
    if isinstance(result, PipelineResult):
        print_pipeline(result)
        return
    for run in result.runs:
        print_pipeline(run.result)
        if run.probe is not None:
            from flows.probe import cli_print as print_probe

            print_probe(run.probe)
        print()
    at_once = f", {result.jobs} at a time" if result.jobs > 1 else ""
    print(f"{len(result.runs)} datasets in one process and one flow{at_once}, {result.seconds:.1f} s:")
    for run in result.runs:
        r = run.result
        stages = " ".join(f"{name}:{info.status}" for name, info in r.stages.items())
        print(f"  {r.dataset:<12} version {r.version:<14} parent run {r.mlflow_run_id}  {stages}  {run.seconds:.1f} s")
