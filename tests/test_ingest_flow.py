"""The ingestion flow end to end: a real Prefect flow run, real Zarr stores, a real MLflow SQLite store."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import CONFIGS

from flows.ingest import ingest_flow
from storage.dataset_store import DatasetStore
from storage.layout import RootLayout


def mlflow_client(root: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=RootLayout(root).local_tracking_uri)


def test_bluebirds_ingestion_is_recorded_and_a_second_run_is_unchanged(prefect_harness, root):
    first = ingest_flow(str(CONFIGS / "bluebirds.yaml"), str(root))
    assert (first.n_items, first.n_annotators, first.n_labels, first.n_classes) == (108, 39, 4212, 2)
    assert first.batch_status == "appended"

    client = mlflow_client(root)
    run = client.get_run(first.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["source.kind"] == "mapping"
    assert run.data.params["classes"] == "[False, True]"
    assert run.data.metrics["n_labels"] == 4212 and run.data.metrics["bytes_written"] > 0
    assert run.data.tags["annostyle.version"] == first.version
    [dataset_input] = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == first.version
    assert dataset_input.dataset.name == "bluebirds"
    manifest = json.loads(Path(client.download_artifacts(run.info.run_id, "manifest.json", str(root))).read_text())
    assert manifest["batches"][0]["version"] == first.version

    second = ingest_flow(str(CONFIGS / "bluebirds.yaml"), str(root))
    assert second.batch_status == "unchanged" and second.version == first.version
    assert second.mlflow_run_id != first.mlflow_run_id  # every ingestion is a run


@pytest.mark.slow
def test_dreem_tracks_counts(prefect_harness, root):
    summary = ingest_flow(str(CONFIGS / "dreem.yaml"), str(root))
    assert (summary.n_sequences, summary.n_frames, summary.n_annotators, summary.n_labels) == \
        (80, 85911, 5, 412919)
    store = DatasetStore.open(summary.store)
    assert int((store.read_labels() >= 0).sum()) == 412919
    assert store.class_names == ["Wake", "N1", "N2", "N3", "REM"]
    lengths = np.diff(store.offsets)
    assert lengths.sum() == 85911 and len(lengths) == 80


def test_rte_counts(prefect_harness, root):
    summary = ingest_flow(str(CONFIGS / "rte.yaml"), str(root))
    assert (summary.n_items, summary.n_annotators, summary.n_labels) == (800, 164, 8000)
