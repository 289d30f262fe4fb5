"""Hierarchical clustering of annotators, and the comparison of two trees.

Trees come from scipy's `linkage` on the condensed distance matrix. Ward's method assumes the
distances are euclidean (it merges by the increase in within-cluster variance): with cosine,
Jensen-Shannon or label distances it still runs but the merge heights are not variances, so
read those trees for their order, and prefer "average" or "complete" as a check. The MABe
notebook's second tree is ward on the learned annotator embeddings (euclidean).

Cluster ids are canonical: a cut into k clusters numbers clusters 0, 1, ... in order of their
first annotator, so equal partitions give equal ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.cluster.hierarchy import cophenet, fcluster, linkage
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import pdist, squareform

from storage.results.analyze import TreeComparison, TruthScore


def cluster_members(assignment: Mapping[str, int]) -> dict[int, list[str]]:
    """The annotators of each cluster (in the assignment's order), clusters in id order.

    >>> cluster_members({"a": 1, "b": 0, "c": 1})
    {0: ['b'], 1: ['a', 'c']}
    """
    groups: dict[int, list[str]] = {}
    for annotator, c in assignment.items():
        groups.setdefault(int(c), []).append(annotator)
    return dict(sorted(groups.items()))


def cluster_line(assignment: Mapping[str, int]) -> str:
    """One cut on one line: `a, c | b`."""
    return " | ".join(", ".join(m) for m in cluster_members(assignment).values())


def condensed(matrix: np.ndarray) -> np.ndarray:
    """The condensed form of a square distance matrix (symmetrised, zero diagonal)."""
    sym = 0.5 * (np.asarray(matrix, np.float64) + np.asarray(matrix, np.float64).T)
    np.fill_diagonal(sym, 0.0)
    return squareform(sym, checks=False)


def tree(matrix: np.ndarray, method: str = "ward") -> np.ndarray:
    """Linkage matrix of a square distance matrix."""
    if matrix.shape[0] < 2:
        raise ValueError("clustering needs at least two annotators")
    return linkage(condensed(matrix), method=method)


def embedding_tree(embeddings: np.ndarray, method: str = "ward") -> np.ndarray:
    """Linkage of annotator embeddings with euclidean distances (the MABe notebook's tree)."""
    return linkage(np.asarray(embeddings, np.float64), method=method, metric="euclidean")


def embedding_distances(embeddings: np.ndarray) -> np.ndarray:
    return squareform(pdist(np.asarray(embeddings, np.float64), metric="euclidean"))


def canonical(labels: np.ndarray) -> np.ndarray:
    """Relabel clusters 0, 1, ... in order of first appearance."""
    order: dict[int, int] = {}
    return np.array([order.setdefault(int(x), len(order)) for x in labels], dtype=np.int64)


def cut(linkage_matrix: np.ndarray, k: int) -> np.ndarray:
    """Cluster ids (canonical) of the cut into at most k clusters."""
    return canonical(fcluster(linkage_matrix, t=k, criterion="maxclust"))


def valid_ks(ks: Sequence[int], n: int) -> list[int]:
    """The ks that can cut a tree over n leaves into at least two clusters."""
    return [k for k in ks if 2 <= k <= n]


def clusters_by_k(linkage_matrix: np.ndarray, annotators: Sequence[str], ks: Sequence[int]) -> dict[str, dict[str, int]]:
    """{"k": {annotator: cluster}} for every valid k."""
    return {str(k): dict(zip(annotators, cut(linkage_matrix, k).tolist(), strict=True))
            for k in valid_ks(ks, len(annotators))}


def best_k(matrix: np.ndarray, clusters: Mapping[str, Mapping[str, int]], annotators: Sequence[str]) -> int | None:
    """The cut (a key of `clusters`) with the largest silhouette on the distance matrix; None
    when no cut has two clusters with a member each and fewer clusters than annotators."""
    from sklearn.metrics import silhouette_score  # here: scikit-learn takes a second to import

    dist = np.nan_to_num(np.asarray(matrix, np.float64), nan=float(np.nanmax(matrix)) if np.isfinite(matrix).any() else 0.0)
    np.fill_diagonal(dist, 0.0)
    best: tuple[float, int] | None = None
    for k, assignment in clusters.items():
        ids = np.array([assignment[a] for a in annotators])
        if not 2 <= len(set(ids.tolist())) < len(annotators):
            continue
        score = float(silhouette_score(dist, ids, metric="precomputed"))
        if best is None or score > best[0]:
            best = (score, int(k))
    return None if best is None else best[1]


def tree_fit(linkage_matrix: np.ndarray, matrix: np.ndarray) -> float:
    """Cophenetic correlation of a tree with the distances it was built from."""
    value, _ = cophenet(linkage_matrix, condensed(matrix))
    return float(value)


def cophenetic_correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Pearson correlation of two trees' cophenetic distances over the same leaves."""
    a, b = cophenet(first), cophenet(second)
    if np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def moved(first: np.ndarray, second: np.ndarray, annotators: Sequence[str]) -> list[str]:
    """Annotators whose cluster in `second` is not the one matched to their cluster in `first`.

    Clusters are matched one to one so that as many annotators as possible stay (Hungarian
    assignment on the contingency table).
    """
    k1, k2 = int(first.max()) + 1, int(second.max()) + 1
    table = np.zeros((k1, k2), np.int64)
    np.add.at(table, (first, second), 1)
    rows, cols = linear_sum_assignment(-table)
    match = dict(zip(cols.tolist(), rows.tolist(), strict=True))
    return [a for a, x, y in zip(annotators, first, second, strict=True) if match.get(int(y)) != int(x)]


def compare_trees(first: np.ndarray, second: np.ndarray, annotators: Sequence[str],
                  ks: Sequence[int]) -> TreeComparison:
    """How two trees over the same annotators agree: cophenetic correlation, ARI and movers per k."""
    from sklearn.metrics import adjusted_rand_score  # here: scikit-learn takes a second to import

    ari: dict[str, float | None] = {}
    movers: dict[str, list[str]] = {}
    for k in valid_ks(ks, len(annotators)):
        a, b = cut(first, k), cut(second, k)
        ari[str(k)] = float(adjusted_rand_score(a, b))
        movers[str(k)] = moved(a, b, annotators)
    return TreeComparison(cophenetic_correlation=cophenetic_correlation(first, second), ari=ari, moved=movers)


def ari_vs_truth(linkage_matrix: np.ndarray, annotators: Sequence[str], truth: Mapping[str, str],
                 ks: Sequence[int]) -> TruthScore:
    """Adjusted Rand index of the tree's cuts against known groups, at the true k and per k."""
    from sklearn.metrics import adjusted_rand_score  # here: scikit-learn takes a second to import

    known = [i for i, a in enumerate(annotators) if a in truth]
    groups = [truth[annotators[i]] for i in known]
    true_k = len(set(groups))
    by_k: dict[str, float | None] = {}
    for k in sorted(set(valid_ks([*ks, true_k], len(annotators)))):
        by_k[str(k)] = float(adjusted_rand_score(groups, cut(linkage_matrix, k)[known]))
    return TruthScore(true_k=true_k, at_true_k=by_k.get(str(true_k)), by_k=by_k)
