"""The whole pipeline as one Prefect flow: ingest -> train -> predict -> analyze.

One MLflow parent run per pipeline run, a nested run per stage. Train, predict and analyze are
Prefect tasks cached on their inputs (`flows.cache`: dataset version, the stage's config section,
the code version and what the stage before produced), so a rerun with nothing changed skips them
and says so; a skipped stage still gets a nested run tagged with the run it reused. Ingestion
always runs: it is how a changed source is noticed, and an unchanged one costs a read and a hash.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from prefect import Task, flow

from configs.schema import load_config
from errors import InputError
from flows.analyze import analyze_task, publish_clusters
from flows.cache import run_cached, stage_key
from flows.ingest import ingest_task
from flows.predict import predict_task
from flows.train import record_training, train_task
from flows.version import code_version
from storage.dataset_store import DatasetStore
from storage.layout import RootLayout
from storage.prediction_store import PredictionStore
from storage.results import StageResult
from storage.results.pipeline import PipelineResult, StageStatus
from storage.results.predict import PredictResult
from storage.results.styles import card_lines
from storage.tracking import parent_run
from storage.tracking.analyze import record_analysis
from storage.tracking.ingest import record_ingest
from storage.tracking.pipeline import (
    active_tracking_uri,
    record_lineage,
    record_reuse,
    record_stages,
    run_with_cache_key,
    tag_cache_key,
)
from storage.tracking.predict import record_predict
from tasks.clustering import cluster_line

log = logging.getLogger(__name__)

STAGES = ("ingest", "train", "predict", "analyze")
R = TypeVar("R", bound=StageResult)


def _force_from(force: list[str] | None) -> set[str]:
    """`--force STAGE` reruns that stage and every stage after it."""
    stages: set[str] = set()
    for name in force or []:
        if name not in STAGES:
            raise InputError("--force", "stage", name, f"unknown stage; stages are {list(STAGES)}")
        stages.update(STAGES[STAGES.index(name):])
    return stages


@flow(name="pipeline", validate_parameters=False)
def pipeline_flow(config_path: str, root: str, force: list[str] | None = None,
                  scheduler: str | None = None, trigger: str = "manual") -> PipelineResult:
    """Run every stage for the config's dataset, skipping those whose inputs did not change."""
    config = load_config(config_path)
    layout = RootLayout(Path(root), config.store.uri_prefix)
    source = Path(config_path)
    refresh = _force_from(force)
    config_json = config.model_dump(mode="json")  # JSON boundary: the parent run's params and the cache keys
    stages: dict[str, StageStatus] = {}
    tags = {"annostyle.trigger": trigger, "annostyle.code_version": code_version()}
    with parent_run(layout, config.name, "pipeline", config_json, tags) as parent:
        experiment = parent.info.experiment_id
        ingest = ingest_task(config, layout)
        ingest.mlflow_run_id = record_ingest(layout, config, ingest, DatasetStore.open(ingest.store).manifest, source)
        stages["ingest"] = StageStatus(status="ran", run_id=ingest.mlflow_run_id, batch_status=ingest.batch_status)
        version = ingest.version

        def run(stage: str, task: Task[..., R], key_parts: list[Any], outputs: Callable[[R], bool],
                record: Callable[[R], str], *args: Any, **kwargs: Any) -> R:
            """One cached stage: its result, recorded as a new run or as a reuse of the run that made it."""
            key = stage_key(stage, layout, *key_parts)
            result, reused = run_cached(task, key, layout, stage in refresh, outputs, *args, **kwargs)
            original = None
            if reused:
                original = run_with_cache_key(experiment, key)
                run_id = record_reuse(layout, config, stage, result, original)
                log.info("%s: inputs unchanged, reused the result of run %s", stage, original)
            else:
                run_id = record(result)
                tag_cache_key(run_id, key)
            result.mlflow_run_id = original or run_id
            stages[stage] = StageStatus(status="reused" if reused else "ran", run_id=run_id, reused_from=original)
            return result

        train = run("train", train_task, [version, config_json["train"]],
                    lambda r: r.model_dir is None or Path(r.model_dir).exists(),
                    lambda r: str(record_training(layout, config, r, source).mlflow_run_id),  # set there
                    config, layout)
        # the stores' location is part of the key: a moved `store.uri_prefix` is not the same output
        analysis_inputs: list[Any] = [version, config_json["analyze"], ingest.store]
        prediction: PredictResult | None = None
        if train.model_dir:
            prediction = run("predict", predict_task,
                             [version, train.key, config_json["predict"], ingest.store],
                             lambda r: PredictionStore.exists(r.store),
                             lambda r: record_predict(layout, config, r, config_path=source),
                             config, layout, model_dir=Path(train.model_dir), scheduler=scheduler)
            analysis_inputs.append(prediction.version)
        else:
            stages["predict"] = StageStatus(status="skipped", run_id=None,
                                            reason=train.reason or "no model: label-only dataset")
        analysis = run("analyze", analyze_task, analysis_inputs,
                       lambda r: Path(r.outputs).exists(),
                       lambda r: record_analysis(layout, config, r, config_path=source),
                       config, layout, scheduler)
        publish_clusters(analysis, stages["analyze"].run_id)
        prediction_store = prediction.store if prediction else None
        record_lineage(stages, version, ingest.store, prediction_store)
        record_stages(stages)
        parent_id = parent.info.run_id
    return PipelineResult(
        dataset=config.name, version=version, trigger=trigger, mlflow_run_id=parent_id, stages=stages,
        annotators=analysis.annotators, clusters=analysis.clusters, ari_vs_truth=analysis.ari_vs_truth,
        method=analysis.method, cophenetic_correlation=analysis.cophenetic_correlation,
        style_cards=analysis.styles.cards if analysis.styles else [],
        metrics=train.metrics, model_dir=train.model_dir, prediction_store=prediction_store,
        train_seed=train.seed, train_summary=train.summary,
        tracking_uri=active_tracking_uri(), root=str(Path(root)),
    )


def cli_run(args: argparse.Namespace) -> PipelineResult:
    return pipeline_flow(config_path=str(Path(args.config).resolve()), root=str(args.root.resolve()),
                         force=args.force, scheduler=args.scheduler)


def cli_print(result: PipelineResult) -> None:
    print(f"pipeline {result.dataset} (dataset version {result.version}):")
    for stage, info in result.stages.items():
        note = f" (reused run {info.reused_from})" if info.reused_from else ""
        note = f" ({info.reason})" if info.reason else note
        print(f"  {stage:<8} {info.status}{note}")
    if result.metrics and result.metrics.val_accuracy is not None:
        print(f"  model: validation accuracy {result.metrics.val_accuracy:.3f}")
    test = (result.train_summary.get("model") or {}).get("test_accuracy")
    if test is not None and test.mean is not None:
        spread = f" +/- {test.sd:.3f} over {test.n} seeds" if test.sd is not None else ""
        print(f"  model: test accuracy {test.mean:.3f}{spread}; predicted and analysed with seed {result.train_seed}")
    print(f"annotator clusters ({result.method}):")
    for k, assignment in result.clusters.items():
        print(f"  k={k}: {cluster_line(assignment)}")
    truth = result.ari_vs_truth.distances if result.ari_vs_truth else None
    if truth and truth.at_true_k is not None:
        print(f"  adjusted Rand index against the true style groups (k={truth.true_k}): {truth.at_true_k:.3f}")
    if result.style_cards:
        print("style cards (against the consensus of the others; all in the analysis's styles.json):")
        print("\n".join(f"  {line}" for line in card_lines(result.style_cards)))
    print(f"MLflow parent run {result.mlflow_run_id} in {result.tracking_uri}; open the UI with:")
    print(f"  annostyle ui --root {result.root}    (or: mlflow ui --backend-store-uri "
          f"{result.tracking_uri} --host 127.0.0.1)")
