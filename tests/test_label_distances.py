"""Label-based distances: kappa equals sklearn's on the shared frames, missing pairs are reported
and imputed, and the shared real sets get label-based clusters."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import CONFIGS
from sklearn.metrics import cohen_kappa_score

from configs.schema import load_config
from storage.layout import RootLayout
from tasks.analyze import analyze
from tasks.ingest import ingest
from tasks.label_distances import agreement_matrices, label_distances, pair_counts


def sparse_labels(n: int, n_ann: int, n_classes: int, seed: int, p_missing: float = 0.6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, n_classes, n)
    labels = np.where(rng.random((n, n_ann)) < 0.7, truth[:, None], rng.integers(0, n_classes, (n, n_ann)))
    labels[rng.random((n, n_ann)) < p_missing] = -1
    return labels.astype(np.int16)


def test_kappa_and_disagreement_match_sklearn_on_the_overlapping_frames():
    labels = sparse_labels(3000, 9, 4, seed=0)
    labels[:, 7] = np.where(labels[:, 7] >= 0, 2, -1)  # one annotator who only ever says 2
    labels[:, 8] = np.where(labels[:, 8] >= 0, 2, -1)  # and another: their kappa is undefined
    counts = pair_counts(labels, 4)
    disagreement, kappa = agreement_matrices(counts)
    for a in range(9):
        for b in range(9):
            both = (labels[:, a] >= 0) & (labels[:, b] >= 0)
            assert counts.overlap[a, b] == both.sum()
            x, y = labels[both, a], labels[both, b]
            assert disagreement[a, b] == pytest.approx(np.mean(x != y), abs=1e-12)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                want = cohen_kappa_score(x, y)
            if np.isnan(want):
                assert np.isnan(kappa[a, b]), (a, b)
            else:
                assert kappa[a, b] == pytest.approx(want, abs=1e-12), (a, b)
    assert np.isnan(kappa[7, 8])


def test_chunked_counts_equal_one_pass():
    from tasks import label_distances as module

    labels = sparse_labels(5000, 6, 3, seed=1)
    one = pair_counts(labels, 3)
    saved = module.MAX_CHUNK_CELLS
    module.MAX_CHUNK_CELLS = 1024 * 6  # 1,024-frame chunks
    try:
        chunked = pair_counts(labels, 3)
    finally:
        module.MAX_CHUNK_CELLS = saved
    for name in ("overlap", "same", "by_class", "n_labels"):
        assert np.array_equal(getattr(one, name), getattr(chunked, name))


def test_low_overlap_pairs_are_listed_and_imputed():
    labels = sparse_labels(400, 5, 2, seed=2, p_missing=0.0)
    labels[:390, 4] = -1  # annotator e shares only 10 frames with anyone
    labels[:, 3] = -1
    labels[:5, 3] = 1  # annotator d: 5 frames
    names = ["a", "b", "c", "d", "e"]
    dist = label_distances(pair_counts(labels, 2), "disagreement", min_overlap=8, impute="max")
    report = dist.report(names)
    assert report.n_low_overlap_pairs == 4 and report.n_pairs == 10
    assert [list(p) for p in report.low_overlap_pairs] == [["a", "d", 5], ["b", "d", 5], ["c", "d", 5], ["d", "e", 0]]
    assert report.isolated_annotators == ["d"]
    observed = dist.disagreement[~dist.missing & ~np.eye(5, dtype=bool)]
    assert dist.imputed_value == pytest.approx(observed.max())
    assert dist.matrix[0, 3] == dist.matrix[3, 0] == dist.imputed_value
    assert dist.matrix[0, 4] == pytest.approx(dist.disagreement[0, 4])  # 10 shared frames: kept
    mean = label_distances(pair_counts(labels, 2), "kappa", min_overlap=8, impute="mean")
    assert mean.imputed_value == pytest.approx((1 - mean.kappa)[~mean.missing & ~np.eye(5, dtype=bool)].mean())


@pytest.fixture(scope="module")
def real_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("real")
    for name in ("bluebirds", "rte", "dreem"):
        ingest(load_config(CONFIGS / f"{name}.yaml"), RootLayout(root))
    return root


@pytest.mark.parametrize("name,n_annotators", [("bluebirds", 39), ("rte", 164), ("dreem", 5)])
def test_shared_real_sets_get_label_based_clusters(real_root, name, n_annotators):
    config = load_config(CONFIGS / f"{name}.yaml", {"analyze": {"figures": False}})
    summary = analyze(config, RootLayout(real_root))
    assert summary.method == "labels" and summary.cophenetic_correlation is None
    assert len(summary.annotators) == n_annotators
    matrix = np.array(summary.distance_matrix)
    assert matrix.shape == (n_annotators, n_annotators) and np.all(np.isfinite(matrix))
    for k in ("2", "3", "4"):
        assert set(summary.clusters[k]) == set(summary.annotators)
        assert len(set(summary.clusters[k].values())) == int(k)
    overlap = summary.overlap
    assert overlap.n_low_overlap_pairs == len(overlap.low_overlap_pairs)
    if name == "rte":  # 10 workers per item, batches of 20 items: most pairs never meet
        assert overlap.n_low_overlap_pairs > 0.8 * overlap.n_pairs and summary.warnings
        a, b, n = overlap.low_overlap_pairs[0]
        assert n < 10 and a in summary.annotators and b in summary.annotators
    else:
        assert overlap.n_low_overlap_pairs == 0
    assert (Path(summary.outputs) / "distance_matrix.csv").is_file()
