"""What fine-tuning a head for new annotators records in MLflow."""

from __future__ import annotations

from pathlib import Path

import mlflow

from configs.schema import PipelineConfig
from storage.layout import RootLayout
from storage.model_store import set_model_run_id
from storage.results.train import FinetuneResult
from storage.tracking import log_metrics, log_store_input, stage_run


def record_finetune(layout: RootLayout, config: PipelineConfig, result: FinetuneResult,
                    config_path: Path | None = None) -> str:
    """One MLflow run for one fine-tuning; returns its run id (also written into the model's spec)."""
    tags = {"annostyle.version": result.version, "annostyle.finetuned_from": result.finetuned_from,
            "annostyle.new_annotators": ",".join(result.new_annotators)}
    params = config.model_dump(mode="json")  # JSON boundary: the config as MLflow params
    with stage_run(layout, result.dataset, "finetune", params, tags) as run:
        log_store_input(result.store, result.dataset, result.version, context="finetune")
        for epoch, loss in enumerate(result.loss):
            log_metrics({"loss": loss}, step=epoch)
        log_metrics({f"train_accuracy.{a}": v for a, v in result.metrics.train_accuracy_per_annotator.items()})
        mlflow.log_dict(result.to_json(), "finetune_summary.json")
        mlflow.log_artifacts(result.model_dir, "model")
        if config_path is not None:
            mlflow.log_artifact(str(config_path), "config")
        set_model_run_id(Path(result.model_dir), run.info.run_id)
        return str(run.info.run_id)
