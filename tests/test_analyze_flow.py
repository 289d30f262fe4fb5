"""The analysis flow end to end: a real Prefect flow run, real Zarr stores, a real MLflow SQLite store.

A small demo dataset is ingested and given a prediction store filled here with logits in each
annotator's true style (the trained model comes from the predict stage); the flow must recover
the groups from the predictions and from the annotator embeddings. A label-only set (bluebirds)
takes the label-based path.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import CONFIGS
from scipy.special import softmax
from test_distances import planted_embeddings

from configs.analyze import PredictConfig
from configs.schema import load_config
from errors import InputError
from flows.analyze import analyze_flow
from flows.cli import main
from storage.dataset_store import DatasetStore
from storage.layout import RootLayout
from storage.prediction_store import PredictionStore
from tasks.analyze import analyze
from tasks.ingest import ingest

GROUP_BIAS = {  # classes: other, approach, attack, investigation
    "lenient": np.array([-0.8, 0.4, 0.4, 0.4]),
    "strict": np.array([0.8, -0.4, -0.4, -0.4]),
    "confuser": np.array([0.0, 0.0, -1.0, 1.0]),
}


def demo_config(folder: Path) -> Path:
    path = folder / "demo.yaml"
    path.write_text(textwrap.dedent("""\
        name: demo
        source: {kind: demo, size: demo, seed: 0, n_sequences: 6, sequence_length: 200, n_annotators: 8}
        analyze: {tsne: true, tsne_sample: 200, projection_sample: 300, rsm_sample: 100}
        """))
    return path


def fill_demo_predictions(root: Path, chunk_frames: int = 500) -> PredictionStore:
    """Logits in each annotator's true style: gold signal + group bias + small annotator noise."""
    dataset = DatasetStore.open(RootLayout(root).dataset_uri("demo"))
    truth = dataset.meta["truth"]["style_groups"]
    groups = [truth[a] for a in dataset.annotators]
    n, rng = dataset.n_frames, np.random.default_rng(7)
    gold = dataset.read_gold()
    shared = 3.0 * np.eye(4)[gold][:, None, :] + rng.normal(size=(n, 1, 4))
    logits = (shared + np.stack([GROUP_BIAS[g] for g in groups])[None]
              + 0.05 * rng.normal(size=(n, len(groups), 4))).astype(np.float32)
    store = PredictionStore.create(
        RootLayout(root).prediction_uri("demo"), n, dataset.annotators, dataset.classes, 28, 8,
        PredictConfig(chunk_frames=chunk_frames),
        {"dataset_store": dataset.uri, "dataset_version": dataset.version, "model_run_id": "planted"})
    features = np.asarray(dataset.features[:n])
    consensus = softmax(logits, axis=-1).mean(axis=1)
    for start, stop in store.pending_chunks():
        store.write_chunk(start, logits[start:stop], features[start:stop], consensus[start:stop])
    index = {g: i for i, g in enumerate(sorted(set(groups)))}
    store.set_annotator_embeddings(planted_embeddings([index[g] for g in groups]))
    return store


def mlflow_client(root: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{root.resolve() / 'mlflow.db'}")


def test_demo_predictions_recover_the_style_groups_and_everything_is_recorded(prefect_harness, root, tmp_path,
                                                                               capsys):
    config = demo_config(tmp_path)
    ingest(load_config(config), RootLayout(root))
    fill_demo_predictions(root)

    summary = analyze_flow(str(config), str(root))
    assert summary.method == "predictions" and summary.metric == "euclidean"
    assert len(summary.annotators) == 8 and np.array(summary.distance_matrix).shape == (8, 8)
    assert set(summary.clusters) == {"2", "3", "4"}
    truth = summary.ari_vs_truth
    assert truth.distances.true_k == 3
    assert truth.distances.at_true_k == 1.0 and truth.embeddings.at_true_k == 1.0
    assert summary.embeddings.comparison.ari["3"] == 1.0
    assert summary.embeddings.comparison.moved["3"] == []
    assert summary.cophenetic_correlation > 0.5
    assert summary.item_level.label_source == "gold" and "kmeans_tsne_scaled" in summary.item_level.purity
    # t-SNE (opt-in here) on its own sub-sample; UMAP off by default; each view timed
    n_items = summary.item_level.n_frames
    assert summary.item_level.samples == {"pca": n_items, "tsne": min(200, n_items)} and n_items > 200
    assert {"kmeans", "pca", "tsne", "rsm"} == set(summary.item_level.seconds)
    assert all(s >= 0 for s in summary.item_level.seconds.values())
    assert [list(r) for r in summary.distances.partials_computed] == [[0, 1200]]

    client = mlflow_client(root)
    run = client.get_run(summary.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["annostyle.stage"] == "analyze"
    assert run.data.metrics["ari_vs_truth_distances"] == 1.0
    assert run.data.metrics["cophenetic_correlation"] == pytest.approx(summary.cophenetic_correlation)
    inputs = {i.dataset.name: i.dataset.digest for i in run.inputs.dataset_inputs}
    assert inputs["demo"] == summary.stores.dataset.version
    assert inputs["demo-predictions"] == summary.stores.predictions.version
    figures = {f.path for f in client.list_artifacts(run.info.run_id, "figures")}
    assert {"figures/distance_heatmap.png", "figures/dendrograms.png", "figures/embedding_clustermap.png",
            "figures/projections.png", "figures/rsm.png"} <= figures
    tables = {f.path for f in client.list_artifacts(run.info.run_id, "tables")}
    assert {"tables/distance_matrix.csv", "tables/linkage_ward.json", "tables/clusters.json"} <= tables
    logged = json.loads(Path(client.download_artifacts(run.info.run_id, "summary.json", str(tmp_path))).read_text())
    assert logged["mlflow_run_id"] == run.info.run_id and logged["clusters"] == summary.clusters

    from prefect.artifacts import Artifact

    artifact = Artifact.get("analyze-demo")
    assert artifact is not None and summary.mlflow_run_id in artifact.data and "k = 3" in artifact.data

    # the command line, on a LocalCluster: the stored partial sums are reused, nothing is recomputed
    assert main(["analyze", str(config), "--root", str(root), "--json", "--scheduler", "local-cluster"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["scheduler"] == "local-cluster" and again["distances"]["frames_computed"] == 0
    assert again["distances"]["partials_reused"] == [[0, 1200]]
    assert again["clusters"] == summary.clusters and again["mlflow_run_id"] != summary.mlflow_run_id
    assert np.allclose(again["distance_matrix"], summary.distance_matrix, rtol=1e-12)


def test_label_only_data_takes_the_label_path(prefect_harness, root, capsys):
    ingest(load_config(CONFIGS / "bluebirds.yaml"), RootLayout(root))
    summary = analyze_flow(str(CONFIGS / "bluebirds.yaml"), str(root))
    assert summary.method == "labels" and summary.cophenetic_correlation is None
    assert summary.overlap.n_low_overlap_pairs == 0 and summary.ari_vs_truth is None
    assert len(summary.clusters["3"]) == 39
    run = mlflow_client(root).get_run(summary.mlflow_run_id)
    assert run.data.tags["annostyle.method"] == "labels" and "tree_fit_ward" in run.data.metrics
    from flows.analyze import cli_print

    cli_print(summary)
    printed = capsys.readouterr().out
    assert "k=3" in printed and summary.mlflow_run_id in printed


def test_an_incomplete_prediction_store_is_refused(root, tmp_path):
    config = demo_config(tmp_path)
    ingest(load_config(config), RootLayout(root))
    store = fill_demo_predictions(root)
    store.extend(100)
    with pytest.raises(InputError, match="incomplete"):
        analyze(load_config(config), RootLayout(root))
