"""The ingestion flow: config -> dataset store -> MLflow run."""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from configs.schema import load_config
from flows.retry import retry_unless_bad_input
from storage.dataset_store import DatasetStore
from storage.layout import RootLayout
from storage.results.ingest import IngestResult
from storage.tracking.ingest import record_ingest
from tasks.ingest import ingest

ingest_task = task(
    name="ingest", retries=2, retry_delay_seconds=[1, 5],
    retry_condition_fn=retry_unless_bad_input, cache_policy=NO_CACHE,
)(ingest)
"""`tasks.ingest.ingest` as a Prefect task: retried unless the input is bad, never cached."""


@flow(name="ingest", validate_parameters=False)
def ingest_flow(config_path: str, root: str) -> IngestResult:
    """Ingest the config's source into its dataset store and record the run in MLflow."""
    config = load_config(config_path)
    layout = RootLayout(Path(root), config.store.uri_prefix)
    result = ingest_task(config, layout)
    manifest = DatasetStore.open(result.store).manifest
    result.mlflow_run_id = record_ingest(layout, config, result, manifest, Path(config_path))
    return result


def cli_run(args: argparse.Namespace) -> IngestResult:
    return ingest_flow(config_path=str(Path(args.config).resolve()), root=str(args.root.resolve()))


def cli_print(result: IngestResult) -> None:
    batch = result.batch
    print(f"dataset {result.dataset} version {result.version} ({result.batch_status})")
    print(f"  {result.n_items:,} items in {result.n_sequences:,} sequences, "
          f"{result.n_annotators} annotators, {result.n_labels:,} labels, "
          f"{result.n_classes} classes {result.class_names}")
    if result.split_counts:
        print("  split: " + ", ".join(f"{n:,} {name}" for name, n in result.split_counts.items()))
    if result.batch_status == "appended":
        print(f"  this batch: {batch.new_frames:,} new frames, {batch.changed_frames:,} changed, "
              f"{batch.labels_added:,} labels added, {batch.stored_bytes:,} bytes written")
    print(f"  store {result.store}")
    print(f"  MLflow run {result.mlflow_run_id}")
