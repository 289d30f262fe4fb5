"""The prediction flow: trained model + dataset store -> prediction store -> MLflow run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from configs.schema import PipelineConfig, load_config
from storage.layout import RootLayout
from storage.results.predict import PredictResult
from storage.tracking.predict import record_predict


def predict(config: PipelineConfig, layout: RootLayout, **options: Any) -> PredictResult:
    """`tasks.predict.predict`, imported when the stage runs: it imports torch, which a
    label-only pipeline (no predict stage) never needs."""
    from tasks.predict import predict as predict_with_model

    return predict_with_model(config, layout, **options)


predict_task = task(name="predict", retries=2, retry_delay_seconds=[2.0, 10.0], cache_policy=NO_CACHE)(predict)
"""Prefect task; a retry resumes from the chunks already written."""


@flow(name="predict", validate_parameters=False)
def predict_flow(config_path: str, root: str, export_npz: bool = False,
                 scheduler: str | None = None) -> PredictResult:
    """Write every annotator's predictions for every frame, and record the run."""
    config = load_config(config_path)
    layout = RootLayout(Path(root), config.store.uri_prefix)
    result = predict_task(config, layout, export_npz=export_npz, scheduler=scheduler or config.analyze.scheduler)
    result.mlflow_run_id = record_predict(layout, config, result, config_path=Path(config_path))
    return result


def cli_run(args: argparse.Namespace) -> PredictResult:
    return predict_flow(config_path=str(Path(args.config).resolve()), root=str(args.root.resolve()),
                        export_npz=args.export_npz, scheduler=args.scheduler)


def cli_print(result: PredictResult) -> None:
    n, a, c = result.shape
    print(f"predictions of {result.dataset}: {n:,} frames x {a} annotators x {c} classes, "
          f"{result.dtype} ({result.frames_predicted:,} frames predicted now, "
          f"{result.frames_reused:,} reused)")
    ratio = result.compression_ratio
    print(f"  {result.bytes:,} bytes on disk, logits compressed {ratio:.2f}x" if ratio else
          f"  {result.bytes:,} bytes on disk")
    print(f"  store {result.store}")
    if result.npz:
        print(f"  npz export: {result.npz.files:,} files in {result.npz.dest}")
    print(f"  MLflow run {result.mlflow_run_id}")
