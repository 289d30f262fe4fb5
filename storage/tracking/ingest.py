"""What an ingestion run records in MLflow."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow

from configs.schema import PipelineConfig
from storage.layout import RootLayout
from storage.results.ingest import IngestResult
from storage.tracking import log_metrics, log_store_input, stage_run


def record_ingest(layout: RootLayout, config: PipelineConfig, result: IngestResult,
                  manifest: Mapping[str, Any],  # JSON boundary: the store's manifest, logged as JSON
                  config_path: Path | None = None) -> str:
    """One MLflow run for one ingestion (the config as params, the store as input, the counts
    as metrics, the manifest and config file as artifacts); returns its run id."""
    tags = {"annostyle.version": result.version, "annostyle.store": result.store,
            "annostyle.batch_status": result.batch_status}
    with stage_run(layout, result.dataset, "ingest", config.model_dump(mode="json"), tags) as run:
        log_store_input(result.store, result.dataset, result.version, context="ingest")
        batch = result.batch
        log_metrics({
            "n_frames": result.n_frames, "n_sequences": result.n_sequences,
            "n_annotators": result.n_annotators, "n_labels": result.n_labels,
            "n_classes": result.n_classes, "labels_added": batch.labels_added,
            "frames_added": batch.new_frames, "bytes_written": batch.stored_bytes,
            "bytes_decoded": batch.decoded_bytes, "compression_ratio": batch.compression_ratio,
            "mb_per_s": batch.mb_per_s, "seconds": batch.seconds,
        })
        mlflow.log_dict(dict(manifest), "manifest.json")
        if config_path is not None:
            mlflow.log_artifact(str(config_path), "config")
        return run.info.run_id
