"""Clustering: planted style groups are recovered from prediction distances (ARI 1.0 at the true
k), the embedding tree is compared, movers are named, cluster ids are canonical."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score
from test_distances import fill_store, planted_embeddings, planted_logits

from tasks.clustering import (
    ari_vs_truth,
    canonical,
    clusters_by_k,
    compare_trees,
    cophenetic_correlation,
    cut,
    embedding_tree,
    moved,
    tree,
    tree_fit,
    valid_ks,
)
from tasks.distances import store_distances

GROUPS = [2, 0, 1, 0, 2, 1, 1, 0, 2, 0]
NAMES = [f"ann{i}" for i in range(len(GROUPS))]
TRUTH = {n: ["lenient", "strict", "confuser"][g] for n, g in zip(NAMES, GROUPS, strict=True)}


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory):
    logits = planted_logits(12_000, GROUPS, seed=4)
    return fill_store(tmp_path_factory.mktemp("p") / "p.zarr", logits, GROUPS, chunk_frames=2500)


@pytest.mark.parametrize("metric", ["euclidean", "cosine", "jensenshannon"])
@pytest.mark.parametrize("method", ["ward", "average", "complete"])
def test_planted_groups_are_recovered_from_a_prediction_store(planted_store, metric, method):
    matrix = store_distances(planted_store, metric).matrix
    z = tree(matrix, method)
    assert adjusted_rand_score(GROUPS, cut(z, 3)) == 1.0
    assert ari_vs_truth(z, NAMES, TRUTH, [2, 3, 4]).at_true_k == 1.0
    assert tree_fit(z, matrix) > 0.8


def test_embedding_tree_agrees_and_the_comparison_reports_it(planted_store):
    z = tree(store_distances(planted_store, "euclidean").matrix)
    emb = embedding_tree(planted_store.annotator_embeddings())
    assert adjusted_rand_score(GROUPS, cut(emb, 3)) == 1.0
    comparison = compare_trees(z, emb, NAMES, [2, 3, 4])
    assert comparison.ari["3"] == 1.0 and comparison.moved["3"] == []
    assert 0.5 < comparison.cophenetic_correlation <= 1.0
    assert cophenetic_correlation(z, z) == pytest.approx(1.0)


def test_a_swapped_annotator_is_named_as_moving():
    groups = list(GROUPS)
    swapped = list(groups)
    swapped[0] = 0  # ann0 learned like group 0 in the embeddings
    z = tree(np.abs(np.subtract.outer(np.array(groups, float), np.array(groups, float))) + _noise(10))
    emb = embedding_tree(planted_embeddings(swapped))
    comparison = compare_trees(z, emb, NAMES, [3])
    assert comparison.moved["3"] == ["ann0"] and comparison.ari["3"] < 1.0
    assert moved(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0]), list("abcd")) == []  # renaming is no move


def test_cluster_ids_are_canonical_and_ks_are_limited():
    assert canonical(np.array([3, 3, 1, 2, 1])).tolist() == [0, 0, 1, 2, 1]
    z = tree(np.abs(np.subtract.outer(np.arange(4.0), np.arange(4.0))) + _noise(4))
    out = clusters_by_k(z, list("abcd"), [2, 3, 4, 5])
    assert list(out) == ["2", "3", "4"] and out["4"] == {"a": 0, "b": 1, "c": 2, "d": 3}
    assert valid_ks([2, 3, 4], 3) == [2, 3]
    with pytest.raises(ValueError):
        tree(np.zeros((1, 1)))


def _noise(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = 0.01 * rng.random((n, n))
    x = x + x.T
    np.fill_diagonal(x, 0)
    return x
