"""The training flow: config -> trained model (or aggregators for label-only data) -> MLflow run."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from prefect import flow

from configs.schema import PipelineConfig, load_config
from storage.dataset_store import DatasetStore, dataset_uri
from storage.tracking.train import record_train
from tasks.model import SPEC
from tasks.train import MAIN, SUMMARY, run_folder, train_key, train_task

log = logging.getLogger(__name__)


@flow(name="train", validate_parameters=False)
def train_flow(config_path: str, root: str) -> dict[str, Any]:
    """Train the config's annotator model and baselines on its ingested store; record the run."""
    return train_and_record(load_config(config_path), Path(root), Path(config_path))


def train_and_record(config: PipelineConfig, root: Path, config_path: Path | None) -> dict[str, Any]:
    """The train task, then its MLflow run (which writes its id into the model's spec)."""
    summary = train_task(config, root)
    run_id = record_train(root, config.model_dump(mode="json"), summary, config_path)
    summary["mlflow_run_id"] = run_id
    if summary["model_dir"]:
        summary["model_run_id"] = run_id
    return summary


def trained_model(config: PipelineConfig, root: Path, config_path: Path | None) -> dict[str, Any]:
    """The model this config trains on the store's latest version: the recorded one when it
    exists (same dataset version and train settings), else trained and recorded now."""
    store = DatasetStore.open(dataset_uri(root, config.name, config.store.uri_prefix))
    folder = run_folder(root, config.name, train_key(store.version, config.train))
    if (folder / SUMMARY).is_file() and (folder / MAIN / SPEC).is_file():
        spec = json.loads((folder / MAIN / SPEC).read_text())
        if spec.get("model_run_id"):
            log.info("using the trained model in %s (MLflow run %s)", folder, spec["model_run_id"])
            summary = json.loads((folder / SUMMARY).read_text())
            return {**summary, "model_run_id": spec["model_run_id"], "mlflow_run_id": spec["model_run_id"]}
    return train_and_record(config, root, config_path)


def cli_run(args: argparse.Namespace) -> dict[str, Any]:
    return train_flow(config_path=str(Path(args.config).resolve()), root=str(args.root.resolve()))


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def cli_print(summary: dict[str, Any]) -> None:
    m = summary["metrics"]
    print(f"dataset {summary['dataset']} version {summary['version']}")
    if summary["head"] is None:
        print(f"  no model: {summary['reason']}")
        for method in ("mv", "ds"):
            if method in m:
                print(f"  {method.upper()} consensus vs gold: {_pct(m[method]['consensus_accuracy'])} "
                      f"({m[method]['n_gold']} items with gold)")
        print(f"  MLflow run {summary['mlflow_run_id']}")
        return
    resumed = f", resumed from epoch {summary['resumed_from_epoch']}" if summary.get("resumed_from_epoch") else ""
    print(f"  {summary['head']} head on a {summary['encoder']} encoder, {summary['device']}, "
          f"{summary['epochs']} epochs (best {summary['best_epoch']}){resumed}, {summary['seconds']:.0f} s")
    rows = [("model", m), *[(b, m[b]) for b in ("mv", "ds") if b in m]]
    print(f"  {'':6} {'val acc':>8} {'per-ann mean':>12} {'consensus':>10} {'test':>8}")
    for name, r in rows:
        print(f"  {name:6} {_pct(r['val_accuracy']):>8} {_pct(r['val_accuracy_annotator_mean']):>12} "
              f"{_pct(r['consensus_accuracy']):>10} {_pct(r['test_accuracy']):>8}")
    print(f"  model {summary['model_dir']}")
    print(f"  MLflow run {summary['mlflow_run_id']}")
