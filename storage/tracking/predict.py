"""What a prediction run records in MLflow."""

from __future__ import annotations

from pathlib import Path

import mlflow

from configs.schema import PipelineConfig
from storage.layout import RootLayout
from storage.results.predict import PredictResult
from storage.tracking import log_metrics, log_store_input, stage_run


def record_predict(layout: RootLayout, config: PipelineConfig, result: PredictResult, *,
                   config_path: Path | None = None) -> str:
    """One MLflow run for one prediction export; returns its run id."""
    dataset_store = layout.dataset_uri(result.dataset)
    tags = {"annostyle.version": result.dataset_version, "annostyle.store": dataset_store,
            "annostyle.prediction_store": result.store, "annostyle.prediction_version": result.version,
            "annostyle.model_run_id": str(result.model_run_id)}
    with stage_run(layout, result.dataset, "predict", config.model_dump(mode="json"), tags) as run:
        log_store_input(dataset_store, result.dataset, result.dataset_version, context="predict")
        log_metrics({
            "frames_predicted": result.frames_predicted, "frames_reused": result.frames_reused,
            "bytes": result.bytes, "compression_ratio": result.compression_ratio,
            "frames_per_s": result.frames_per_s,
        })
        mlflow.log_dict(result.to_json(), "prediction_summary.json")
        if config_path is not None:
            mlflow.log_artifact(str(config_path), "config")
        return run.info.run_id
