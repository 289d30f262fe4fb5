"""`annostyle run CONFIG [CONFIG ...]`: the pipeline of one dataset, or of several in one process.

One config runs `pipeline_flow` as before. Several run in one Prefect flow (`pipelines`) that
calls the pipeline's body once per config, in the order given: the process pays its imports,
its Prefect API connection and its MLflow store opening once, and every dataset still gets its
own MLflow parent run with its nested stage runs (and its cached stages, keyed as in a single
run). The first dataset that fails stops the flow; the ones before it stay recorded.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from prefect import flow

from flows.pipeline import cli_print as print_pipeline
from flows.pipeline import pipeline_flow
from storage.results.multi import DatasetRun, MultiPipelineResult
from storage.results.pipeline import PipelineResult

log = logging.getLogger(__name__)


@flow(name="pipelines", validate_parameters=False)
def pipelines_flow(config_paths: list[str], root: str, force: list[str] | None = None,
                   scheduler: str | None = None, trigger: str = "manual") -> MultiPipelineResult:
    """Every config's pipeline, one after another, in this one flow run."""
    started = time.perf_counter()
    runs: list[DatasetRun] = []
    for i, config_path in enumerate(config_paths, 1):
        log.info("dataset %d of %d: %s", i, len(config_paths), config_path)
        t0 = time.perf_counter()
        result = pipeline_flow.fn(config_path=config_path, root=root, force=force, scheduler=scheduler,
                                  trigger=trigger)
        runs.append(DatasetRun(config=config_path, seconds=round(time.perf_counter() - t0, 3), result=result))
    return MultiPipelineResult(runs=runs, seconds=round(time.perf_counter() - started, 3), root=root)


def cli_run(args: argparse.Namespace) -> PipelineResult | MultiPipelineResult:
    configs = [str(Path(c).resolve()) for c in args.configs]
    root = str(args.root.resolve())
    if len(configs) == 1:
        return pipeline_flow(config_path=configs[0], root=root, force=args.force, scheduler=args.scheduler)
    return pipelines_flow(config_paths=configs, root=root, force=args.force, scheduler=args.scheduler)


def cli_print(result: PipelineResult | MultiPipelineResult) -> None:
    if isinstance(result, PipelineResult):
        print_pipeline(result)
        return
    for run in result.runs:
        print_pipeline(run.result)
        print()
    print(f"{len(result.runs)} datasets in one process and one flow, {result.seconds:.1f} s:")
    for run in result.runs:
        r = run.result
        stages = " ".join(f"{name}:{info.status}" for name, info in r.stages.items())
        print(f"  {r.dataset:<12} version {r.version:<14} parent run {r.mlflow_run_id}  {stages}  {run.seconds:.1f} s")
