"""Item-level views of the encoder embeddings: projections, KMeans purity, a similarity matrix.

On a sample of frames: PCA, t-SNE and UMAP to two dimensions, each on the raw and on the
standard-scaled embeddings; KMeans (k = number of labels in the sample) on the embeddings and on
every projection, judged by purity against the frames' labels (gold where known, else the
consensus argmax): the share of frames whose cluster's majority label is their own. And a
representational similarity matrix: cosine similarity between the embeddings of a smaller
sample, rows and columns sorted by label, with the mean similarity within and between labels.

The sample is taken from a few random store chunks (whole chunks are what a read costs), then
uniformly inside them, so its cost does not grow with the store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from storage.results.analyze import ItemLevelSummary

log = logging.getLogger(__name__)
LabelSource = Literal["gold", "consensus"]  # gold labels where known, else the consensus argmax


def sample_frames(n_frames: int, chunk_frames: int, size: int, seed: int = 0) -> np.ndarray:
    """Sorted frame indices: `size` frames drawn uniformly from enough random whole chunks."""
    rng = np.random.default_rng(seed)
    if n_frames <= size:
        return np.arange(n_frames)
    n_chunks = -(-n_frames // chunk_frames)
    order = rng.permutation(n_chunks)
    pool: list[np.ndarray] = []
    have = 0
    for c in order:  # about 4x the sample in frames, so that several chunks contribute
        start, stop = c * chunk_frames, min((c + 1) * chunk_frames, n_frames)
        pool.append(np.arange(start, stop))
        have += stop - start
        if have >= 4 * size:
            break
    frames = np.concatenate(pool)
    return np.sort(rng.choice(frames, size=min(size, len(frames)), replace=False))


def purity(clusters: np.ndarray, labels: np.ndarray) -> float:
    """Share of items whose cluster's most common label is their label."""
    total = 0
    for c in np.unique(clusters):
        _, counts = np.unique(labels[clusters == c], return_counts=True)
        total += counts.max()
    return float(total / len(labels))


def kmeans_purity(x: np.ndarray, labels: np.ndarray, k: int, seed: int = 0) -> float:
    clusters = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(x)
    return purity(clusters, labels)


def project(x: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """Two-dimensional projection of rows of x: "pca", "tsne" or "umap"."""
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method == "tsne":
        perplexity = float(min(30.0, max(5.0, (len(x) - 1) / 4)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    if method == "umap":
        import umap  # slow to import the first time (numba compiles)

        return umap.UMAP(n_components=2, random_state=seed, n_jobs=1).fit_transform(x)
    raise ValueError(f"unknown projection {method!r}")


@dataclass
class ItemLevel:
    """What the item-level analysis found on one sample."""

    frames: np.ndarray
    labels: np.ndarray
    label_source: LabelSource
    coords: dict[str, np.ndarray] = field(default_factory=dict)
    purity: dict[str, float] = field(default_factory=dict)
    rsm: np.ndarray | None = None
    rsm_labels: np.ndarray | None = None
    rsm_contrast: dict[str, float] = field(default_factory=dict)

    def report(self) -> ItemLevelSummary:
        return ItemLevelSummary(n_frames=len(self.frames), label_source=self.label_source,
                                n_labels=len(np.unique(self.labels)), purity=self.purity,
                                rsm=self.rsm_contrast, projections=sorted(self.coords))


def cosine_rsm(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity matrix of the rows, sorted by label (stable); returns (matrix, sorted labels)."""
    order = np.argsort(labels, kind="stable")
    y = np.asarray(x[order], np.float64)
    y = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
    return y @ y.T, labels[order]


def rsm_contrast(matrix: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(labels), dtype=bool)
    within = float(matrix[same & off].mean()) if (same & off).any() else float("nan")
    between = float(matrix[~same].mean()) if (~same).any() else float("nan")
    return {"within": within, "between": between, "difference": within - between}


def item_level(embeddings: np.ndarray, labels: np.ndarray, frames: np.ndarray, label_source: LabelSource,
               methods: list[str], rsm_size: int, seed: int = 0) -> ItemLevel:
    """Projections, KMeans purity (raw and scaled) and the RSM of a sample of embeddings.

    BLAS and OpenMP run single-threaded here: on samples this small their thread pools cost
    far more than they give (t-SNE of 400 points: 44 s with 2 threads, 1.3 s with one, measured
    on the 2-core machine of STACK-NOTES).
    """
    with threadpool_limits(limits=1):
        return _item_level(embeddings, labels, frames, label_source, methods, rsm_size, seed)


def _item_level(embeddings: np.ndarray, labels: np.ndarray, frames: np.ndarray, label_source: LabelSource,
                methods: list[str], rsm_size: int, seed: int) -> ItemLevel:
    x = np.asarray(embeddings, np.float64)
    k = max(2, len(np.unique(labels)))
    out = ItemLevel(frames, labels, label_source)
    scaled = StandardScaler().fit_transform(x)
    for variant, data in (("raw", x), ("scaled", scaled)):
        out.purity[f"kmeans_{variant}"] = kmeans_purity(data, labels, k, seed)
        for method in methods:
            coords = project(data, method, seed)
            out.coords[f"{method}_{variant}"] = coords
            out.purity[f"kmeans_{method}_{variant}"] = kmeans_purity(coords, labels, k, seed)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(x), size=min(rsm_size, len(x)), replace=False))
    out.rsm, out.rsm_labels = cosine_rsm(x[pick], labels[pick])
    out.rsm_contrast = rsm_contrast(out.rsm, out.rsm_labels)
    return out
