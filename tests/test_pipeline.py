"""The whole pipeline: `annostyle run configs/demo.yaml` through the real Prefect test harness and a
real MLflow SQLite store; stage caching and --force; reprocessing new batches."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import CONFIGS

from configs.schema import DemoSource, load_config
from flows.cli import main
from flows.reprocess import reprocess_flow
from storage.batch import Batch
from storage.dataset_store import DatasetStore
from storage.layout import RootLayout
from storage.prediction_store import PredictionStore
from tasks.analyze import analyze
from tasks.demo import generate_batch
from tasks.predict import predict
from tasks.readers.table import write_table_batch

DEMO = CONFIGS / "demo.yaml"
pytestmark = pytest.mark.slow


def run_cli(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def client(root: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{root.resolve() / 'mlflow.db'}")


@pytest.fixture(scope="module")
def first_run(prefect_harness, tmp_path_factory):
    """`annostyle run configs/demo.yaml --json` once, in a fresh root (capsys is per test)."""
    root = tmp_path_factory.mktemp("pipeline") / "root"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["run", str(DEMO), "--root", str(root), "--json"]) == 0
    return root, json.loads(out.getvalue().strip().splitlines()[-1])


def demo_batch(first: int, last: int, extra_annotator_from: str | None = None) -> Batch:
    """Sequences [first, last) of the demo generator (the demo dataset holds the first 48)."""
    full = generate_batch(DemoSource(kind="demo", n_sequences=last))
    start = first * 1000
    labels, annotators = full.labels[start:], list(full.annotators)
    if extra_annotator_from:
        source = labels[:, annotators.index(extra_annotator_from)]
        labels = np.concatenate([labels, source[:, None]], axis=1)
        annotators.append("newcomer")
    return Batch(sequence_names=full.sequence_names[first:], sequence_lengths=full.sequence_lengths[first:],
                 annotators=annotators, classes=full.classes, labels=labels, gold=full.gold[start:],
                 features=full.features[start:], sources={"labels": "test batch"})


def test_demo_run_records_parent_and_stage_runs_with_lineage(first_run):
    root, summary = first_run
    assert {s: v["status"] for s, v in summary["stages"].items()} == \
        {"ingest": "ran", "train": "ran", "predict": "ran", "analyze": "ran"}
    assert summary["ari_vs_truth"]["distances"]["at_true_k"] == 1.0
    assert summary["method"] == "predictions"

    c = client(root)
    parent = c.get_run(summary["mlflow_run_id"])
    assert parent.data.tags["annostyle.stage"] == "pipeline"
    children = c.search_runs([parent.info.experiment_id],
                             f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.data.tags["annostyle.stage"] for r in children) == ["analyze", "ingest", "predict", "train"]
    by_stage = {r.data.tags["annostyle.stage"]: r for r in children}
    # lineage: analysis -> prediction store -> model run -> dataset version
    tags = parent.data.tags
    assert tags["annostyle.analysis_run_id"] == by_stage["analyze"].info.run_id
    assert by_stage["analyze"].data.tags["annostyle.model_run_id"] == by_stage["train"].info.run_id
    assert by_stage["analyze"].data.tags["annostyle.prediction_run_id"] == by_stage["predict"].info.run_id
    assert by_stage["predict"].data.tags["annostyle.prediction_store"] == tags["annostyle.prediction_store"]
    store = PredictionStore.open(tags["annostyle.prediction_store"])
    assert store.dataset_version == tags["annostyle.version"] == summary["version"]
    assert by_stage["train"].data.tags["annostyle.version"] == summary["version"]


def test_rerun_skips_every_stage_and_force_analyze_reruns_only_it(first_run, capsys):
    root, first = first_run
    again = run_cli(capsys, "run", str(DEMO), "--root", str(root), "--json")
    assert {s: v["status"] for s, v in again["stages"].items()} == \
        {"ingest": "ran", "train": "reused", "predict": "reused", "analyze": "reused"}
    for stage in ("train", "predict", "analyze"):
        assert again["stages"][stage]["reused_from"] == first["stages"][stage]["run_id"]
        reused = client(root).get_run(again["stages"][stage]["run_id"])
        assert reused.data.tags["annostyle.reused_from"] == first["stages"][stage]["run_id"]
    forced = run_cli(capsys, "run", str(DEMO), "--root", str(root), "--json", "--force", "analyze")
    assert {s: v["status"] for s, v in forced["stages"].items()} == \
        {"ingest": "ran", "train": "reused", "predict": "reused", "analyze": "ran"}
    assert forced["clusters"] == first["clusters"]


def test_reprocess_new_frames_predicts_only_them_and_matches_a_full_rerun(first_run, prefect_harness, tmp_path):
    root, _ = first_run
    config = load_config(DEMO)
    batch_file = write_table_batch(demo_batch(48, 52), tmp_path / "batch")
    summary = reprocess_flow(str(DEMO), str(root), str(batch_file))
    assert summary.new_frames == 4000 and summary.frames_predicted == 4000
    assert summary.stages["train"].status == "skipped"
    assert summary.stages["predict"].frames_reused == 48000
    pstore = PredictionStore.open(RootLayout(root).prediction_uri("demo"))
    assert pstore.segments == [(0, 48000), (48000, 52000)]

    # the full rerun on the union: the same model predicts every frame into a fresh store
    union = tmp_path / "union"
    shutil.copytree(RootLayout(root).dataset_uri("demo"), RootLayout(union).dataset_uri("demo"))
    full = predict(config, RootLayout(union), model_dir=Path(pstore.model_dir))
    assert full.frames_predicted == 52000
    reference = np.asarray(analyze(config, RootLayout(union)).distance_matrix)
    ours = np.asarray(summary.distance_matrix)
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-9)


def test_reprocess_with_a_new_annotator_extends_the_embedding(first_run, prefect_harness, tmp_path):
    root, _ = first_run
    # a newcomer who labels new sequences exactly as ann3 does (a strict annotator)
    batch_file = write_table_batch(demo_batch(52, 56, extra_annotator_from="ann3"), tmp_path / "batch")
    summary = reprocess_flow(str(DEMO), str(root), str(batch_file))
    assert summary.new_annotators == ["newcomer"]
    assert summary.stages["train"].status == "ran"
    store = DatasetStore.open(RootLayout(root).dataset_uri("demo"))
    pstore = PredictionStore.open(RootLayout(root).prediction_uri("demo"))
    assert pstore.annotators == store.annotators and "newcomer" in pstore.annotators
    assert pstore.annotator_embeddings().shape[0] == store.n_annotators
    assert summary.frames_predicted == store.n_frames
    assert "newcomer" in summary.annotators and "newcomer" in summary.clusters["3"]


def test_runs_lists_the_demo_run_with_its_stages(first_run, capsys):
    root, first = first_run
    listed = run_cli(capsys, "runs", "--root", str(root), "--json")["runs"]
    demo = next(r for r in listed if r["run_id"] == first["mlflow_run_id"])
    assert demo["dataset"] == "demo" and demo["version"] == first["version"]
    assert {s: v["status"] for s, v in demo["stages"].items() if s in first["stages"]} == \
        {s: v["status"] for s, v in first["stages"].items()}


def test_run_probes_a_dataset_after_its_pipeline_beside_another(first_run, capsys):
    """`run demo bluebirds --jobs 2 --probe demo`: the demo's pipeline (on the root the tests
    before extended), then its probe in its lane with the model that pipeline holds (its own
    MLflow run, its table in the summary), while bluebirds runs beside it."""
    root, _ = first_run
    summary = run_cli(capsys, "run", str(DEMO), str(CONFIGS / "bluebirds.yaml"), "--jobs", "2", "--probe", "demo",
                      "--root", str(root), "--json")
    demo, bluebirds = summary["runs"]
    assert summary["jobs"] == 2 and bluebirds["probe"] is None
    probe = demo["probe"]
    assert probe["model_dirs"]["supervised"] == demo["result"]["model_dir"]  # the pipeline's model
    assert probe["dataset"] == "demo" and "simclr" in probe["encoders"] and "supervised" in probe["encoders"]
    gold = probe["results"]
    assert gold["supervised"]["gold"]["accuracy"] > gold["raw"]["gold"]["accuracy"]
    run = client(root).get_run(probe["mlflow_run_id"])
    assert run.data.tags["annostyle.dataset"] == "demo"
    assert (Path(probe["outputs"]) / "probe_table.csv").is_file()
