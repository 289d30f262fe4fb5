"""Item-level views of the encoder embeddings: projections, KMeans purity, a similarity matrix.

On a sample of frames: PCA (and, opt-in, t-SNE and UMAP) to two dimensions, each on the raw
and on the standard-scaled embeddings; KMeans (k = number of labels in the sample) on the
embeddings and on every projection, judged by purity against the frames' labels (gold where
known, else the consensus argmax): the share of frames whose cluster's majority label is their
own. And a representational similarity matrix: cosine similarity between the embeddings of a
smaller sample, rows and columns sorted by label, with the mean similarity within and between
labels.

The sample is taken from a few random store chunks (whole chunks are what a read costs), then
uniformly inside them, so its cost does not grow with the store. t-SNE and UMAP each run on a
sub-sample of their own size (`Projection.sample`), which bounds their cost: rows outside it
have NaN coordinates. UMAP gets exact nearest neighbours from scikit-learn (BLAS, no Python call
per pair) and its Numba kernels are cached on disk (`NUMBA_CACHE_DIR`), so they compile once.
Every view's time is in the summary (`ItemLevelSummary.seconds`).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from storage.results.analyze import ItemLevelSummary

log = logging.getLogger(__name__)
LabelSource = Literal["gold", "consensus"]  # gold labels where known, else the consensus argmax
UMAP_NEIGHBOURS = 15  # umap-learn's default n_neighbors


@dataclass(frozen=True)
class Projection:
    """One projection method and the most frames it runs on (None: the whole sample)."""

    method: str  # "pca", "tsne" or "umap"
    sample: int | None = None


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


def sub_sample(n: int, size: int | None, seed: int = 0) -> np.ndarray:
    """Sorted row indices of at most `size` of n rows, drawn uniformly (all rows if size is None or >= n)."""
    if size is None or size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


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
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(5.0, (len(x) - 1) / 4)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    if method == "umap":
        return umap_projection(x, seed)
    raise ValueError(f"unknown projection {method!r}")


def umap_projection(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """UMAP to two dimensions on exact euclidean nearest neighbours computed by scikit-learn.

    On fewer than 4,096 rows umap-learn would otherwise call scikit-learn's `pairwise_distances`
    with its Numba metric, a Python call per pair (93 s of a 2,000-frame demo analysis under a
    profiler); the neighbours it would find are the same exact ones.
    """
    from sklearn.neighbors import NearestNeighbors

    umap = _umap_module()
    k = min(UMAP_NEIGHBOURS, len(x) - 1)
    # the query set is the fitted set: every row is its own first neighbour, as umap-learn expects
    dists, index = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(x).kneighbors(x, n_neighbors=k)
    with warnings.catch_warnings():  # no search index is given (only `transform` would need one)
        warnings.filterwarnings("ignore", message=".*knn_search_index.*")
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")
        model = umap.UMAP(n_components=2, n_neighbors=k, random_state=seed, n_jobs=1,
                          precomputed_knn=(index, dists))
        return np.asarray(model.fit_transform(x))


_UMAP: Any = None


def _umap_module() -> Any:
    """`umap`, imported once, with disk caching turned on for its Numba kernels.

    umap-learn compiles its kernels without `cache=True` (pynndescent caches its own), so every
    process paid about 20 s of compilation; caching them makes that once per cache folder
    (`NUMBA_CACHE_DIR`, under the root for `annostyle`). Numba keys each cached kernel on its
    source file and signature, so a new umap-learn version compiles afresh.
    """
    global _UMAP
    if _UMAP is None:
        import umap  # about 60 s on a cold Numba cache (pynndescent compiles), a few s warm
        import umap.distances
        import umap.layouts
        import umap.umap_
        import umap.utils

        _cache_numba_kernels(umap.umap_, umap.layouts, umap.utils, umap.distances)
        _UMAP = umap
    return _UMAP


def _cache_numba_kernels(*modules: Any) -> int:
    """Turn on Numba's disk cache for the not-yet-cached kernels defined in `modules`; returns how many."""
    try:
        from numba.core.caching import NullCache
        from numba.core.dispatcher import Dispatcher
    except ImportError:  # a Numba without these: the kernels just compile per process
        return 0
    count = 0
    for module in modules:
        for obj in vars(module).values():
            if isinstance(obj, Dispatcher) and isinstance(getattr(obj, "_cache", None), NullCache) \
                    and getattr(obj.py_func, "__module__", None) == module.__name__:
                obj.enable_caching()
                count += 1
    return count


@dataclass
class ItemLevel:
    """What the item-level analysis found on one sample.

    `coords` rows are the sample's rows; a projection run on a sub-sample has NaN rows elsewhere.
    """

    frames: np.ndarray
    labels: np.ndarray
    label_source: LabelSource
    coords: dict[str, np.ndarray] = field(default_factory=dict)
    purity: dict[str, float] = field(default_factory=dict)
    rsm: np.ndarray | None = None
    rsm_labels: np.ndarray | None = None
    rsm_contrast: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)

    def report(self) -> ItemLevelSummary:
        return ItemLevelSummary(n_frames=len(self.frames), label_source=self.label_source,
                                n_labels=len(np.unique(self.labels)), purity=self.purity,
                                rsm=self.rsm_contrast, projections=sorted(self.coords),
                                seconds={k: round(v, 3) for k, v in self.seconds.items()},
                                samples=self.samples)


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
               methods: Sequence[str | Projection], rsm_size: int, seed: int = 0) -> ItemLevel:
    """Projections, KMeans purity (raw and scaled) and the RSM of a sample of embeddings.

    `methods` are method names (run on the whole sample) or `Projection`s (run on at most
    their `sample` rows). BLAS and OpenMP run single-threaded here: on samples this small their
    thread pools cost far more than they give (t-SNE of 400 points: 44 s with 2 threads, 1.3 s
    with one, measured on the 2-core machine of STACK-NOTES).
    """
    views = [m if isinstance(m, Projection) else Projection(m) for m in methods]
    with threadpool_limits(limits=1):
        return _item_level(embeddings, labels, frames, label_source, views, rsm_size, seed)


def _item_level(embeddings: np.ndarray, labels: np.ndarray, frames: np.ndarray, label_source: LabelSource,
                views: list[Projection], rsm_size: int, seed: int) -> ItemLevel:
    x = np.asarray(embeddings, np.float64)
    k = max(2, len(np.unique(labels)))
    out = ItemLevel(frames, labels, label_source)
    t0 = time.perf_counter()
    scaled = StandardScaler().fit_transform(x)
    for variant, data in (("raw", x), ("scaled", scaled)):
        out.purity[f"kmeans_{variant}"] = kmeans_purity(data, labels, k, seed)
    out.seconds["kmeans"] = time.perf_counter() - t0
    for view in views:
        t0 = time.perf_counter()
        rows = sub_sample(len(x), view.sample, seed)
        k_rows = max(2, len(np.unique(labels[rows])))
        for variant, data in (("raw", x), ("scaled", scaled)):
            coords = np.full((len(x), 2), np.nan)
            coords[rows] = project(data[rows], view.method, seed)
            out.coords[f"{view.method}_{variant}"] = coords
            out.purity[f"kmeans_{view.method}_{variant}"] = kmeans_purity(coords[rows], labels[rows], k_rows, seed)
        out.seconds[view.method] = time.perf_counter() - t0
        out.samples[view.method] = len(rows)
        log.info("item-level %s of %d frames (raw and scaled) in %.2f s", view.method, len(rows),
                 out.seconds[view.method])
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(x), size=min(rsm_size, len(x)), replace=False))
    out.rsm, out.rsm_labels = cosine_rsm(x[pick], labels[pick])
    out.rsm_contrast = rsm_contrast(out.rsm, out.rsm_labels)
    out.seconds["rsm"] = time.perf_counter() - t0
    return out
