"""The whole pipeline as one Prefect flow: ingest -> train -> predict -> analyze.

One MLflow parent run per pipeline run, a nested run per stage. Train, predict and analyze are
Prefect tasks cached on their inputs (dataset version, the stage's config section, the code
version and what the stage before produced), so a rerun with nothing changed skips them and
says so; a skipped stage still gets a nested run tagged with the run it reused. Ingestion always
runs: it is how a changed source is noticed, and an unchanged one costs a read and a hash.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow
from prefect.cache_policies import CacheKeyFnPolicy

from configs.schema import load_config
from errors import InputError
from flows.analyze import publish_clusters
from storage.dataset_store import DatasetStore
from storage.prediction_store import PredictionStore
from storage.tracking import parent_run, stage_record, stage_run
from storage.tracking.analyze import record_analysis
from storage.tracking.ingest import record_ingest
from storage.tracking.predict import record_predict
from storage.tracking.train import record_train
from tasks.analyze import analyze_task
from tasks.clustering import cluster_line
from tasks.ingest import ingest_task
from tasks.predict import predict_task
from tasks.train import train_task

log = logging.getLogger(__name__)

STAGES = ("ingest", "train", "predict", "analyze")
PACKAGES = ("configs", "flows", "storage", "tasks")


@lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of the project's Python sources: any code change invalidates every cached stage."""
    digest = hashlib.sha256()
    base = Path(__file__).resolve().parent.parent
    for package in PACKAGES:
        for path in sorted((base / package).rglob("*.py")):
            digest.update(str(path.relative_to(base)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def stage_key(stage: str, root: Path, *parts: Any) -> str:
    """The cache key of a stage: its name, the root, the code version and its inputs."""
    payload = json.dumps([stage, str(Path(root).resolve()), code_version(), *parts], sort_keys=True, default=str)
    return f"annostyle-{stage}-{hashlib.sha256(payload.encode()).hexdigest()[:24]}"


def _run_stage(task: Any, key: str, root: Path, refresh: bool, outputs_exist: Callable[[dict], bool],
               *args: Any, **kwargs: Any) -> tuple[dict[str, Any], bool]:
    """Run a task cached under `key`; returns (summary, reused). A cached summary whose outputs are
    gone (a deleted store, say) is not trusted: the stage runs again."""
    cache = Path(root) / "cache"
    cached = task.with_options(
        cache_policy=CacheKeyFnPolicy(cache_key_fn=lambda *_: key).configure(key_storage=str(cache / "keys")),
        persist_result=True, result_serializer="json", refresh_cache=refresh,
    )
    state = cached(*args, return_state=True, **kwargs)
    summary = state.result()
    reused = state.name == "Cached"
    if reused and not outputs_exist(summary):
        log.warning("cached %s result points at outputs that are gone: running it again", task.name)
        state = cached.with_options(refresh_cache=True)(*args, return_state=True, **kwargs)
        summary, reused = state.result(), False
    return summary, reused


def _run_with_key(experiment: str, key: str) -> str | None:
    """The run that computed the result cached under `key` (tagged when it was recorded)."""
    runs = mlflow.MlflowClient().search_runs([experiment], f"tags.`annostyle.cache_key` = '{key}'",
                                             max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


def _record_reuse(root: Path, dataset: str, stage: str, config: Mapping[str, Any], summary: Mapping[str, Any],
                  original: str | None) -> str:
    """A nested run for a skipped stage: what it reused and from which run."""
    tags = {"annostyle.reused": "true", "annostyle.reused_from": str(original)}
    with stage_run(root, dataset, f"{stage} (reused)", config, tags) as run:
        mlflow.log_dict(dict(summary), f"{stage}_summary.json")
        return run.info.run_id


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
                  scheduler: str | None = None, trigger: str = "manual") -> dict[str, Any]:
    """Run every stage for the config's dataset, skipping those whose inputs did not change."""
    config = load_config(config_path)
    root_path = Path(root)
    refresh = _force_from(force)
    config_dict = config.model_dump(mode="json")
    stages: dict[str, dict[str, Any]] = {}
    tags = {"annostyle.trigger": trigger, "annostyle.code_version": code_version()}
    with parent_run(root_path, config.name, "pipeline", config_dict, tags) as parent:
        experiment = parent.info.experiment_id
        ingest = ingest_task(config, root_path)
        ingest["mlflow_run_id"] = record_ingest(root_path, config_dict, ingest,
                                                DatasetStore.open(ingest["store"]).manifest, Path(config_path))
        stages["ingest"] = {"status": "ran", "run_id": ingest["mlflow_run_id"], "batch_status": ingest["batch_status"]}
        version = ingest["version"]
        summaries: dict[str, dict[str, Any]] = {"ingest": ingest}

        def run(stage: str, task: Any, key_parts: list[Any], outputs: Callable[[dict], bool],
                record: Callable[[dict], str], *args: Any, **kwargs: Any) -> dict[str, Any]:
            key = stage_key(stage, root_path, *key_parts)
            summary, reused = _run_stage(task, key, root_path, stage in refresh, outputs, *args, **kwargs)
            original = None
            if reused:
                original = _run_with_key(experiment, key)
                run_id = _record_reuse(root_path, config.name, stage, config_dict, summary, original)
                log.info("%s: inputs unchanged, reused the result of run %s", stage, original)
            else:
                run_id = record(summary)
                mlflow.MlflowClient().set_tag(run_id, "annostyle.cache_key", key)
            summary["mlflow_run_id"] = original or run_id
            stages[stage] = {"status": "reused" if reused else "ran", "run_id": run_id, "reused_from": original}
            summaries[stage] = summary
            return summary

        train = run("train", train_task, [version, config_dict["train"]],
                    lambda s: s.get("model_dir") is None or Path(s["model_dir"]).exists(),
                    lambda s: record_train(root_path, config_dict, s, Path(config_path)),
                    config, root_path)
        # the stores' location is part of the key: a moved `store.uri_prefix` is not the same output
        analysis_inputs: list[Any] = [version, config_dict["analyze"], ingest["store"]]
        if train.get("model_dir"):
            prediction = run("predict", predict_task,
                             [version, train["key"], config_dict["predict"], ingest["store"]],
                             lambda s: PredictionStore.exists(s["store"]),
                             lambda s: record_predict(root_path, config_dict, s, ingest["store"], Path(config_path)),
                             config, root_path, model_dir=Path(train["model_dir"]), scheduler=scheduler)
            analysis_inputs.append(prediction["version"])
        else:
            stages["predict"] = {"status": "skipped", "run_id": None,
                                 "reason": train.get("reason", "no model: label-only dataset")}
        analysis = run("analyze", analyze_task, analysis_inputs,
                       lambda s: Path(s["outputs"]).exists(),
                       lambda s: record_analysis(root_path, config_dict, s, Path(config_path)),
                       config, root_path, scheduler)
        publish_clusters(analysis, config.name, stages["analyze"]["run_id"])
        lineage = {
            "annostyle.version": version,
            "annostyle.store": ingest["store"],
            "annostyle.model_run_id": str(stages["train"]["run_id"]),
            "annostyle.prediction_store": str(summaries.get("predict", {}).get("store")),
            "annostyle.analysis_run_id": str(stages["analyze"]["run_id"]),
        }
        mlflow.set_tags(lineage)
        client = mlflow.MlflowClient()
        for stage in ("predict", "analyze"):
            if stages.get(stage, {}).get("run_id"):
                client.set_tag(stages[stage]["run_id"], "annostyle.model_run_id", lineage["annostyle.model_run_id"])
        client.set_tag(stages["analyze"]["run_id"], "annostyle.prediction_run_id",
                       str(stages.get("predict", {}).get("run_id")))
        stage_record(stages)
        parent_id = parent.info.run_id
    return {
        "dataset": config.name, "version": version, "trigger": trigger, "mlflow_run_id": parent_id,
        "stages": stages, "annotators": analysis["annotators"], "clusters": analysis["clusters"],
        "ari_vs_truth": analysis.get("ari_vs_truth"), "method": analysis["method"],
        "cophenetic_correlation": analysis.get("cophenetic_correlation"),
        "metrics": train.get("metrics"), "model_dir": train.get("model_dir"),
        "prediction_store": summaries.get("predict", {}).get("store"),
        "tracking_uri": mlflow.get_tracking_uri(), "root": str(root_path),
    }


def cli_run(args: argparse.Namespace) -> dict[str, Any]:
    return pipeline_flow(config_path=str(Path(args.config).resolve()), root=str(args.root.resolve()),
                         force=args.force, scheduler=args.scheduler)


def cli_print(summary: dict[str, Any]) -> None:
    print(f"pipeline {summary['dataset']} (dataset version {summary['version']}):")
    for stage, info in summary["stages"].items():
        note = f" (reused run {info['reused_from']})" if info.get("reused_from") else ""
        note = f" ({info['reason']})" if info.get("reason") else note
        print(f"  {stage:<8} {info['status']}{note}")
    if summary.get("metrics") and summary["metrics"].get("val_accuracy") is not None:
        m = summary["metrics"]
        print(f"  model: validation accuracy {m['val_accuracy']:.3f}")
    print(f"annotator clusters ({summary['method']}):")
    for k, assignment in summary["clusters"].items():
        print(f"  k={k}: {cluster_line(assignment)}")
    truth = (summary.get("ari_vs_truth") or {}).get("distances")
    if truth:
        print(f"  adjusted Rand index against the true style groups (k={truth['true_k']}): {truth['at_true_k']:.3f}")
    print(f"MLflow parent run {summary['mlflow_run_id']} in {summary['tracking_uri']}; open the UI with:")
    print(f"  annostyle ui --root {summary['root']}    (or: mlflow ui --backend-store-uri "
          f"{summary['tracking_uri']} --host 127.0.0.1)")
