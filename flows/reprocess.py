"""Reprocess a new annotation batch at a cost proportional to the batch.

The batch is appended to the dataset store (the same readers as ingest). Then:
- same annotators, model unchanged: only the new frames are predicted (the prediction store
  grows by one segment), their partial distance sums are added, and the annotators are
  clustered again; frames and sums already there are reused;
- new annotators: the head's annotator embedding grows by one row per newcomer and the head is
  fine-tuned with the encoder frozen; then every frame is predicted again (the model changed)
  and the distances recomputed;
- label-only datasets: the label-based analysis runs again (it is cheap).
The result says what was recomputed and why.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import flow

from configs.schema import config_for_batch, load_config
from errors import InputError
from flows.analyze import analyze_task, publish_clusters
from flows.ingest import ingest_task
from flows.predict import predict_task
from flows.train import finetune_task
from storage.dataset_store import DatasetStore
from storage.layout import RootLayout
from storage.model_store import read_spec
from storage.prediction_store import PredictionStore
from storage.results.analyze import PartialSums
from storage.results.pipeline import ReprocessResult, StageStatus
from storage.tracking import parent_run
from storage.tracking.analyze import record_analysis
from storage.tracking.finetune import record_finetune
from storage.tracking.ingest import record_ingest
from storage.tracking.pipeline import record_stages
from storage.tracking.predict import record_predict
from tasks.analyze import analysed_version
from tasks.clustering import cluster_line


@flow(name="reprocess", validate_parameters=False)
def reprocess_flow(config_path: str, root: str, batch_path: str, scheduler: str | None = None,
                   trigger: str = "new-batch") -> ReprocessResult:
    """Append the batch at `batch_path` and recompute only what it changes.

    An unchanged batch whose analysis is older than the store was ingested by a run that did not
    finish (killed, failed); reprocess then finishes its work instead of skipping it.
    """
    config = load_config(config_path)
    batch_config = config_for_batch(config, batch_path)
    layout = RootLayout(Path(root), config.store.uri_prefix)
    source = Path(config_path)
    config_json = config.model_dump(mode="json")  # JSON boundary: the parent run's params
    stages: dict[str, StageStatus] = {}
    recomputed: list[str] = []
    tags = {"annostyle.trigger": trigger, "annostyle.batch": str(Path(batch_path).resolve())}
    with parent_run(layout, config.name, "reprocess", config_json, tags) as parent:
        ingest = ingest_task(batch_config, layout)
        ingest.mlflow_run_id = record_ingest(layout, batch_config, ingest,
                                             DatasetStore.open(ingest.store).manifest, source)
        stages["ingest"] = StageStatus(status="ran", run_id=ingest.mlflow_run_id, batch_status=ingest.batch_status)

        def result(**outcome: object) -> ReprocessResult:
            return ReprocessResult.model_validate({
                "dataset": config.name, "version": ingest.version, "trigger": trigger, "batch": str(batch_path),
                "batch_status": ingest.batch_status, "new_frames": ingest.batch.new_frames,
                "changed_frames": ingest.batch.changed_frames, "new_annotators": ingest.batch.new_annotators,
                "stages": stages, "recomputed": recomputed, "mlflow_run_id": parent.info.run_id, **outcome})

        if ingest.batch_status == "unchanged" and analysed_version(layout, config.name) == ingest.version:
            for stage in ("train", "predict", "analyze"):
                stages[stage] = StageStatus(status="skipped", run_id=None, reason="batch already ingested")
            record_stages(stages)
            return result()

        done: dict[str, object] = {}
        if ingest.has_features:
            pred_uri = layout.prediction_uri(config.name)
            if not PredictionStore.exists(pred_uri):
                raise InputError(pred_uri, None, config.name,
                                 "no earlier predictions to extend: run `annostyle run` on this config first")
            written_by = PredictionStore.open(pred_uri).model_dir
            if written_by is None:
                raise InputError(pred_uri, "model_dir", None, "the prediction store does not name the model that "
                                 "wrote it: run `annostyle run --force predict` on this config first")
            model_dir = Path(written_by)
            store = DatasetStore.open(ingest.store)
            # annotators the model lacks: this batch's newcomers, or those of an earlier, unfinished run
            newcomers = store.annotators[len(read_spec(model_dir).annotators):]
            if newcomers:
                tuned = finetune_task(config, layout, model_dir, store)
                tuned.mlflow_run_id = record_finetune(layout, config, tuned, config_path=source)
                stages["train"] = StageStatus(status="ran", run_id=tuned.mlflow_run_id,
                                              reason=f"fine-tuned the head for new annotators {newcomers}")
                recomputed.append(f"head fine-tuned for {len(newcomers)} new annotator(s); "
                                  "every frame predicted again")
                model_dir = Path(tuned.model_dir)
            else:
                stages["train"] = StageStatus(status="skipped", run_id=None,
                                              reason="same annotators: the model stays as it is")
            prediction = predict_task(config, layout, model_dir=model_dir, scheduler=scheduler)
            prediction.mlflow_run_id = record_predict(layout, config, prediction, config_path=source)
            stages["predict"] = StageStatus(status="ran", run_id=prediction.mlflow_run_id,
                                            frames_predicted=prediction.frames_predicted,
                                            frames_reused=prediction.frames_reused)
            recomputed.append(f"{prediction.frames_predicted:,} frames predicted, "
                              f"{prediction.frames_reused:,} reused")
            done["frames_predicted"] = prediction.frames_predicted
        else:
            stages["train"] = StageStatus(status="skipped", run_id=None, reason="label-only dataset: no model")
            stages["predict"] = StageStatus(status="skipped", run_id=None, reason="label-only dataset: no model")
        analysis = analyze_task(config, layout, scheduler)
        analysis.mlflow_run_id = record_analysis(layout, config, analysis, config_path=source)
        publish_clusters(analysis)
        stages["analyze"] = StageStatus(status="ran", run_id=analysis.mlflow_run_id)
        sums = analysis.distances
        if isinstance(sums, PartialSums):
            recomputed.append(f"partial distance sums: {len(sums.partials_computed)} frame range(s) "
                              f"computed ({sums.frames_computed:,} frames), "
                              f"{len(sums.partials_reused)} reused")
        else:
            recomputed.append(f"annotators clustered again ({analysis.method})")
        record_stages(stages)
        return result(**done, partial_sums=sums, annotators=analysis.annotators, clusters=analysis.clusters,
                      distance_matrix=analysis.distance_matrix, ari_vs_truth=analysis.ari_vs_truth)


def cli_run(args: argparse.Namespace) -> ReprocessResult:
    return reprocess_flow(config_path=str(Path(args.config).resolve()), root=str(args.root.resolve()),
                          batch_path=str(Path(args.batch).resolve()), scheduler=args.scheduler)


def cli_print(result: ReprocessResult) -> None:
    print(f"reprocess {result.dataset} with {result.batch}: batch {result.batch_status}, "
          f"dataset version {result.version}")
    print(f"  {result.new_frames:,} new frames, {result.changed_frames:,} changed, "
          f"new annotators: {result.new_annotators or 'none'}")
    for stage, info in result.stages.items():
        note = f" ({info.reason})" if info.reason else ""
        print(f"  {stage:<8} {info.status}{note}")
    for line in result.recomputed:
        print(f"  recomputed: {line}")
    for k, assignment in (result.clusters or {}).items():
        print(f"  k={k}: {cluster_line(assignment)}")
    print(f"  MLflow parent run {result.mlflow_run_id}")
