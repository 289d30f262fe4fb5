"""Reprocess a new annotation batch at a cost proportional to the batch.

The batch is appended to the dataset store (the same readers as ingest). Then:
- same annotators, model unchanged: only the new frames are predicted (the prediction store
  grows by one segment), their partial distance sums are added, and the annotators are
  clustered again; frames and sums already there are reused;
- new annotators: the head's annotator embedding grows by one row per newcomer and the head is
  fine-tuned with the encoder frozen; then every frame is predicted again (the model changed)
  and the distances recomputed;
- label-only datasets: the label-based analysis runs again (it is cheap).
The summary says what was recomputed and why.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from prefect import flow

from configs.schema import config_for_batch, load_config
from errors import InputError
from flows.analyze import publish_clusters
from storage.dataset_store import DatasetStore
from storage.prediction_store import PredictionStore, prediction_uri
from storage.tracking import parent_run, stage_record
from storage.tracking.analyze import record_analysis
from storage.tracking.finetune import record_finetune
from storage.tracking.ingest import record_ingest
from storage.tracking.predict import record_predict
from tasks.analyze import analysis_dir, analyze_task
from tasks.clustering import cluster_line
from tasks.finetune import finetune_task
from tasks.ingest import ingest_task
from tasks.model import SPEC
from tasks.predict import predict_task


@flow(name="reprocess", validate_parameters=False)
def reprocess_flow(config_path: str, root: str, batch_path: str, scheduler: str | None = None,
                   trigger: str = "new-batch") -> dict[str, Any]:
    """Append the batch at `batch_path` and recompute only what it changes."""
    config = load_config(config_path)
    batch_config = config_for_batch(config, batch_path)
    root_path = Path(root)
    config_dict = config.model_dump(mode="json")
    stages: dict[str, dict[str, Any]] = {}
    recomputed: list[str] = []
    tags = {"annostyle.trigger": trigger, "annostyle.batch": str(Path(batch_path).resolve())}
    with parent_run(root_path, config.name, "reprocess", config_dict, tags) as parent:
        ingest = ingest_task(batch_config, root_path)
        ingest["mlflow_run_id"] = record_ingest(root_path, batch_config.model_dump(mode="json"), ingest,
                                                DatasetStore.open(ingest["store"]).manifest, Path(config_path))
        stages["ingest"] = {"status": "ran", "run_id": ingest["mlflow_run_id"],
                            "batch_status": ingest["batch_status"]}
        batch = ingest["batch"]
        summary: dict[str, Any] = {"dataset": config.name, "version": ingest["version"], "trigger": trigger,
                                   "batch": str(batch_path), "batch_status": ingest["batch_status"],
                                   "new_frames": batch["new_frames"], "changed_frames": batch["changed_frames"],
                                   "new_annotators": batch["new_annotators"]}
        if ingest["batch_status"] == "unchanged" and _analysed_version(root_path, config.name) == ingest["version"]:
            for stage in ("train", "predict", "analyze"):
                stages[stage] = {"status": "skipped", "run_id": None, "reason": "batch already ingested"}
            stage_record(stages)
            return {**summary, "stages": stages, "recomputed": [], "mlflow_run_id": parent.info.run_id}

        pred_uri = prediction_uri(root_path, config.name, config.store.uri_prefix)
        if ingest["has_features"]:
            if not PredictionStore.exists(pred_uri):
                raise InputError(pred_uri, None, config.name,
                                 "no earlier predictions to extend: run `annostyle run` on this config first")
            model_dir = Path(PredictionStore.open(pred_uri).attrs["extra"]["model_dir"])
            store = DatasetStore.open(ingest["store"])
            # annotators the model lacks: this batch's newcomers, or those of an earlier, unfinished run
            newcomers = store.annotators[len(json.loads((model_dir / SPEC).read_text())["annotators"]):]
            if newcomers:
                tuned = finetune_task(config, root_path, model_dir, store)
                tuned["mlflow_run_id"] = record_finetune(root_path, config_dict, tuned, Path(config_path))
                stages["train"] = {"status": "ran", "run_id": tuned["mlflow_run_id"],
                                   "reason": f"fine-tuned the head for new annotators {newcomers}"}
                recomputed.append(f"head fine-tuned for {len(newcomers)} new annotator(s); "
                                  "every frame predicted again")
                model_dir = Path(tuned["model_dir"])
            else:
                stages["train"] = {"status": "skipped", "run_id": None,
                                   "reason": "same annotators: the model stays as it is"}
            prediction = predict_task(config, root_path, model_dir=model_dir, scheduler=scheduler)
            prediction["mlflow_run_id"] = record_predict(root_path, config_dict, prediction, ingest["store"],
                                                         Path(config_path))
            stages["predict"] = {"status": "ran", "run_id": prediction["mlflow_run_id"],
                                 "frames_predicted": prediction["frames_predicted"],
                                 "frames_reused": prediction["frames_reused"]}
            recomputed.append(f"{prediction['frames_predicted']:,} frames predicted, "
                              f"{prediction['frames_reused']:,} reused")
            summary["frames_predicted"] = prediction["frames_predicted"]
        else:
            stages["train"] = stages["predict"] = {"status": "skipped", "run_id": None,
                                                   "reason": "label-only dataset: no model"}
        analysis = analyze_task(config, root_path, scheduler)
        analysis["mlflow_run_id"] = record_analysis(root_path, config_dict, analysis, Path(config_path))
        publish_clusters(analysis, config.name, analysis["mlflow_run_id"])
        stages["analyze"] = {"status": "ran", "run_id": analysis["mlflow_run_id"]}
        sums = analysis.get("distances") or {}
        if "partials_computed" in sums:
            recomputed.append(f"partial distance sums: {len(sums['partials_computed'])} frame range(s) "
                              f"computed ({sums['frames_computed']:,} frames), "
                              f"{len(sums['partials_reused'])} reused")
        else:
            recomputed.append(f"annotators clustered again ({analysis['method']})")
        stage_record(stages)
        return {**summary, "stages": stages, "recomputed": recomputed, "partial_sums": sums,
                "annotators": analysis["annotators"], "clusters": analysis["clusters"],
                "distance_matrix": analysis["distance_matrix"], "ari_vs_truth": analysis.get("ari_vs_truth"),
                "mlflow_run_id": parent.info.run_id}


def _analysed_version(root: Path, name: str) -> str | None:
    """The dataset version the latest analysis was made from (None if there is none).

    An unchanged batch whose analysis is older than the store was ingested by a run that did not
    finish (killed, failed); reprocess then finishes its work instead of skipping it.
    """
    path = analysis_dir(root, name) / "summary.json"
    if not path.is_file():
        return None
    stores = json.loads(path.read_text()).get("stores") or {}
    return (stores.get("dataset") or {}).get("version")


def cli_run(args: argparse.Namespace) -> dict[str, Any]:
    return reprocess_flow(config_path=str(Path(args.config).resolve()), root=str(args.root.resolve()),
                          batch_path=str(Path(args.batch).resolve()), scheduler=args.scheduler)


def cli_print(summary: dict[str, Any]) -> None:
    print(f"reprocess {summary['dataset']} with {summary['batch']}: batch {summary['batch_status']}, "
          f"dataset version {summary['version']}")
    print(f"  {summary['new_frames']:,} new frames, {summary['changed_frames']:,} changed, "
          f"new annotators: {summary['new_annotators'] or 'none'}")
    for stage, info in summary["stages"].items():
        note = f" ({info['reason']})" if info.get("reason") else ""
        print(f"  {stage:<8} {info['status']}{note}")
    for line in summary["recomputed"]:
        print(f"  recomputed: {line}")
    for k, assignment in (summary.get("clusters") or {}).items():
        print(f"  k={k}: {cluster_line(assignment)}")
    print(f"  MLflow parent run {summary['mlflow_run_id']}")
