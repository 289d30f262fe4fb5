"""Item-level views: sampling from few chunks, purity, projections with and without scaling, the RSM."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.projections import Projection, cosine_rsm, item_level, purity, sample_frames


def blobs(n: int, n_labels: int = 3, dim: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_labels, n)
    centres = 4.0 * rng.normal(size=(n_labels, dim))
    scale = np.geomspace(0.1, 10, dim)  # features on very different scales
    return ((centres[labels] + rng.normal(size=(n, dim))) * scale).astype(np.float32), labels


def test_sample_comes_from_few_chunks_and_is_sorted_and_unique():
    frames = sample_frames(1_000_000, 65536, 2000, seed=1)
    assert len(frames) == 2000 and np.all(np.diff(frames) > 0) and frames[-1] < 1_000_000
    assert len(np.unique(frames // 65536)) <= 1 + 4 * 2000 // 65536
    assert np.array_equal(sample_frames(100, 64, 500), np.arange(100))
    assert np.array_equal(sample_frames(10**6, 4096, 300, seed=3), sample_frames(10**6, 4096, 300, seed=3))


def test_purity():
    labels = np.array([0, 0, 1, 1, 1, 2])
    assert purity(np.array([0, 0, 1, 1, 1, 2]), labels) == 1.0
    assert purity(np.zeros(6, int), labels) == pytest.approx(0.5)


def test_projections_purity_and_rsm_on_separable_items():
    x, labels = blobs(400)
    result = item_level(x, labels, np.arange(400), "gold", ["pca", "tsne"], rsm_size=150, seed=0)
    assert set(result.coords) == {"pca_raw", "pca_scaled", "tsne_raw", "tsne_scaled"}
    assert all(c.shape == (400, 2) for c in result.coords.values())
    assert result.purity["kmeans_scaled"] > 0.95 and result.purity["kmeans_tsne_scaled"] > 0.95
    assert set(result.purity) == {"kmeans_raw", "kmeans_scaled", *(f"kmeans_{k}" for k in result.coords)}
    assert result.rsm.shape == (150, 150) and np.all(np.diff(result.rsm_labels) >= 0)
    assert result.rsm_contrast["difference"] > 0.3
    report = result.report()
    assert report.n_frames == 400 and report.label_source == "gold"


def test_cosine_rsm_is_sorted_by_label():
    x = np.array([[1.0, 0], [0, 1], [1, 0.1], [0.1, 1]])
    matrix, sorted_labels = cosine_rsm(x, np.array([1, 0, 1, 0]))
    assert sorted_labels.tolist() == [0, 0, 1, 1]
    assert matrix[0, 1] > 0.99 and matrix[0, 2] < 0.2 and np.allclose(np.diag(matrix), 1)


@pytest.mark.slow
def test_umap_projection():
    x, labels = blobs(300, seed=2)
    result = item_level(x, labels, np.arange(300), "consensus", ["umap"], rsm_size=50, seed=0)
    assert result.coords["umap_scaled"].shape == (300, 2) and result.purity["kmeans_umap_scaled"] > 0.9
    # umap-learn's kernels (compiled without cache=True) now cache on disk
    import umap.umap_
    from numba.core.caching import NullCache

    assert not isinstance(umap.umap_.smooth_knn_dist._cache, NullCache)


def test_a_projection_on_a_sub_sample_leaves_the_other_rows_nan_and_is_timed():
    x, labels = blobs(300, seed=4)
    result = item_level(x, labels, np.arange(300), "gold", ["pca", Projection("tsne", 120)], rsm_size=50, seed=0)
    tsne = result.coords["tsne_scaled"]
    assert tsne.shape == (300, 2) and int(np.isfinite(tsne[:, 0]).sum()) == 120
    assert np.isfinite(result.coords["pca_raw"]).all()
    assert result.samples == {"pca": 300, "tsne": 120}
    assert result.purity["kmeans_tsne_scaled"] > 0.9  # judged on the 120 projected rows only
    report = result.report()
    assert set(report.seconds) == {"kmeans", "pca", "tsne", "rsm"} and report.samples == result.samples
