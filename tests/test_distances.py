"""Prediction-based annotator distances: Dask accumulation against a float64 NumPy reference
(threads, a LocalCluster, a scheduler address, uneven chunks), partial sums per batch.

The planted-data helpers here are shared with the other analysis tests.
"""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.special import softmax

from configs.analyze import PredictConfig
from storage.prediction_store import PredictionStore
from tasks.distances import (
    annotator_distances,
    block_sums,
    block_sums_numpy,
    dask_scheduler,
    distances_from_sums,
    store_distances,
)

ATTRS = {"dataset_store": "memory://none", "dataset_version": "v0", "model_run_id": "run0"}


# ------------------------------------------------------------------------ planted data
def planted_logits(n_frames: int, groups: list[int], n_classes: int = 4, seed: int = 0,
                   bias: float = 1.0, noise: float = 0.15) -> np.ndarray:
    """Logits = a shared per-frame signal + a per-group class bias + small per-annotator noise."""
    rng = np.random.default_rng(seed)
    shared = 2.0 * rng.normal(size=(n_frames, 1, n_classes))
    group_bias = bias * rng.normal(size=(max(groups) + 1, n_classes))
    own = noise * rng.normal(size=(1, len(groups), n_classes))
    jitter = 0.05 * rng.normal(size=(n_frames, len(groups), n_classes))
    return (shared + group_bias[groups][None] + own + jitter).astype(np.float32)


def planted_embeddings(groups: list[int], dim: int = 8, seed: int = 0) -> np.ndarray:
    """Annotator embeddings: one centre per group plus small noise."""
    rng = np.random.default_rng(seed + 1)
    centres = 3.0 * rng.normal(size=(max(groups) + 1, dim))
    return (centres[groups] + 0.2 * rng.normal(size=(len(groups), dim))).astype(np.float32)


def fill_store(uri: str | Path, logits: np.ndarray, groups: list[int] | None = None, chunk_frames: int = 1000,
               dtype: str = "float16", annotators: list[str] | None = None, d_embedding: int = 8,
               frame_embeddings: np.ndarray | None = None, attrs: dict | None = None) -> PredictionStore:
    """A complete prediction store holding `logits` (consensus = mean probability)."""
    n, n_ann, n_cls = logits.shape
    annotators = annotators or [f"ann{i}" for i in range(n_ann)]
    store = PredictionStore.create(uri, n, annotators, [str(c) for c in range(n_cls)], d_embedding, 8,
                                   PredictConfig(dtype=dtype, chunk_frames=chunk_frames), attrs or ATTRS)
    if frame_embeddings is None:
        frame_embeddings = np.random.default_rng(3).normal(size=(n, d_embedding)).astype(np.float32)
    consensus = softmax(logits.astype(np.float64), axis=-1).mean(axis=1).astype(np.float32)
    for start, stop in store.pending_chunks():
        store.write_chunk(start, logits[start:stop], frame_embeddings[start:stop], consensus[start:stop])
    store.set_annotator_embeddings(planted_embeddings(groups or list(range(n_ann))))
    return store


def reference(logits: np.ndarray, metric: str) -> np.ndarray:
    """Float64 NumPy reference, pair by pair, straight from the definitions (no BLAS)."""
    p = softmax(np.asarray(logits, np.float64), axis=-1)
    n_ann = p.shape[1]
    out = np.zeros((n_ann, n_ann))
    for a in range(n_ann):
        for b in range(n_ann):
            u, v = p[:, a].ravel(), p[:, b].ravel()
            if metric == "euclidean":
                out[a, b] = np.sqrt(np.sum((u - v) ** 2))
            elif metric == "cosine":
                out[a, b] = 1.0 - np.sum(u * v) / np.sqrt(np.sum(u * u) * np.sum(v * v))
            else:
                out[a, b] = np.sqrt(np.mean(jensenshannon(p[:, a], p[:, b], axis=1) ** 2))
    np.fill_diagonal(out, 0.0)
    return out


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    off = ~np.eye(len(want), dtype=bool)
    return float(np.max(np.abs(got - want)[off] / np.abs(want)[off]))


GROUPS = [0, 1, 0, 2, 1, 2, 0]
LOGITS = planted_logits(10_007, GROUPS, n_classes=5, seed=1)
EXACT16 = LOGITS.astype(np.float16)  # what a float16 store holds; the reference sees the same values


# -------------------------------------------------------------------------------- tests
_REFERENCES: dict[tuple[str, str], np.ndarray] = {}


def cached_reference(logits: np.ndarray, metric: str) -> np.ndarray:
    key = (str(logits.dtype), metric)
    if key not in _REFERENCES:
        _REFERENCES[key] = reference(logits, metric)
    return _REFERENCES[key]


@pytest.mark.parametrize("metric", ["euclidean", "cosine", "jensenshannon"])
@pytest.mark.parametrize("chunk", [999, 4096, 10_007])
def test_dask_accumulation_matches_float64_reference_on_threads(metric, chunk):
    for logits in (LOGITS, EXACT16):
        want = cached_reference(logits, metric)
        got = annotator_distances(logits, metric, chunk_frames=chunk)
        assert relative_error(got, want) <= 1e-6, (metric, chunk, logits.dtype)
        assert np.allclose(got, got.T) and np.all(np.diag(got) == 0)


def test_gram_identity_and_the_numpy_path_agree_with_direct_sums():
    block = EXACT16[:3000]
    p = softmax(block.astype(np.float64), axis=-1)
    gram = np.einsum("fac,fbc->ab", p, p)
    direct = ((p[:, :, None, :] - p[:, None, :, :]) ** 2).sum(axis=(0, 3))
    from_gram = np.diag(gram)[:, None] + np.diag(gram)[None, :] - 2 * gram
    assert np.allclose(from_gram, direct, rtol=1e-10, atol=1e-9)
    for logits in (block, block.astype(np.float32)):
        for stat in ("gram", "js"):
            assert np.allclose(block_sums(logits, stat), block_sums_numpy(logits, stat), rtol=1e-10, atol=1e-12)
    assert np.allclose(block_sums(block, "gram"), gram, rtol=1e-12)


def test_logits_beyond_the_exp_table_fall_back_to_the_shifted_softmax():
    logits = EXACT16[:2000].copy()
    logits[100:150] = (logits[100:150].astype(np.float32) * 400).astype(np.float16)  # exp overflows float64
    logits[150:160] = -800.0
    want = reference(logits, "euclidean")
    assert relative_error(annotator_distances(logits, "euclidean", chunk_frames=512), want) <= 1e-6


def test_local_cluster_and_scheduler_address_match_the_reference():
    from distributed import LocalCluster

    want = cached_reference(EXACT16, "euclidean")
    with dask_scheduler("local-cluster") as kwargs:
        got = annotator_distances(EXACT16, "euclidean", chunk_frames=3333, compute_kwargs=kwargs)
    assert relative_error(got, want) <= 1e-6
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp://",
                      host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1")
        with dask_scheduler(cluster.scheduler_address) as kwargs:
            got = annotator_distances(da.from_array(EXACT16, chunks=(2500, 7, 5)), "jensenshannon",
                                      compute_kwargs=kwargs)
    assert relative_error(got, cached_reference(EXACT16, "jensenshannon")) <= 1e-6


def test_store_keeps_partial_sums_per_segment_and_a_new_batch_adds_only_its_own(tmp_path):
    logits = planted_logits(5000, GROUPS, seed=2)
    first, extra = logits[:3500], logits[3500:]
    store = fill_store(tmp_path / "p.zarr", first, GROUPS, chunk_frames=1024)
    one = store_distances(store, "euclidean", read_chunk_frames=2048)
    assert one.computed == [(0, 3500)] and one.reused == []
    assert relative_error(one.matrix, reference(first.astype(np.float16), "euclidean")) <= 1e-6
    again = store_distances(PredictionStore.open(store.uri, mode="r+"), "euclidean")
    assert again.computed == [] and again.reused == [(0, 3500)]
    assert np.array_equal(again.matrix, one.matrix)

    # a new batch of frames: the store grows by a segment, only that segment is summed
    store = PredictionStore.open(store.uri, mode="r+")
    assert store.extend(len(extra), dataset_version="v1") == (3500, 5000)
    assert store.missing_ranges() == [(3500, 5000)]
    with pytest.raises(ValueError, match="incomplete"):
        store_distances(store, "euclidean")
    embeddings = np.zeros((len(extra), 8), np.float32)
    consensus = np.zeros((len(extra), 4), np.float32)
    for start, stop in store.pending_chunks():
        store.write_chunk(start, extra[start - 3500: stop - 3500], embeddings[: stop - start], consensus[: stop - start])
    two = store_distances(store, "euclidean")
    assert two.reused == [(0, 3500)] and two.computed == [(3500, 5000)] and two.frames_computed == 1500
    full = annotator_distances(logits.astype(np.float16), "euclidean")
    assert np.max(np.abs(two.matrix - full)) <= 1e-9 * np.max(full)
    assert relative_error(two.matrix, reference(logits.astype(np.float16), "euclidean")) <= 1e-6

    # rewriting frames drops the partial sums that cover them
    store.write_chunk(4096, logits[4096:5000], np.zeros((904, 8), np.float32), np.zeros((904, 4), np.float32))
    assert list(store.partials("gram")) == [(0, 3500)]


def test_several_ranges_in_one_pass_each_get_their_own_sums(tmp_path):
    store = fill_store(tmp_path / "p.zarr", LOGITS, GROUPS, chunk_frames=1000)
    store.extend(10)  # frames written below; the store now has two segments and no partials
    store.write_chunk(10_007, LOGITS[:10], np.zeros((10, 8), np.float32), np.zeros((10, 5), np.float32))
    result = store_distances(store, "euclidean")
    assert result.computed == [(0, 10_007), (10_007, 10_017)]
    whole = np.concatenate([EXACT16, EXACT16[:10]])
    assert relative_error(result.matrix, reference(whole, "euclidean")) <= 1e-6
    first, second = store.partials("gram")[(0, 10_007)], store.partials("gram")[(10_007, 10_017)]
    assert np.allclose(first, block_sums(EXACT16, "gram"), rtol=1e-12)
    assert np.allclose(second, block_sums(EXACT16[:10], "gram"), rtol=1e-12)


def test_distances_from_sums_metrics_are_well_formed():
    rng = np.random.default_rng(0)
    p = rng.random((50, 3, 2))
    gram = np.einsum("fac,fbc->ab", p, p)
    for metric in ("euclidean", "cosine"):
        d = distances_from_sums(gram, 50, metric)
        assert np.all(d >= 0) and np.allclose(d, d.T) and np.all(np.diag(d) == 0)
    with pytest.raises(ValueError):
        distances_from_sums(gram, 50, "manhattan")


@pytest.mark.slow
def test_store_distances_on_worker_processes_match_threads(tmp_path):
    """Worker processes read the store themselves (the graph holds the store's path, not data)."""
    from distributed import LocalCluster

    store = fill_store(tmp_path / "p.zarr", LOGITS, GROUPS, chunk_frames=2000)
    local = store_distances(store, "euclidean", keep_partials=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, dask_scheduler(cluster.scheduler_address) as kwargs:
        remote = store_distances(store, "euclidean", kwargs, keep_partials=False)
    assert np.max(np.abs(remote.matrix - local.matrix)) <= 1e-12 * np.max(local.matrix)


def test_chunk_reader_reads_what_zarr_reads_and_travels_by_uri(tmp_path):
    import pickle

    from storage.prediction_store import ChunkReader

    store = fill_store(tmp_path / "p.zarr", LOGITS[:2500], GROUPS, chunk_frames=1000)
    reader = ChunkReader(store)
    for index, (start, stop) in enumerate([(0, 1000), (1000, 2000), (2000, 2500)]):
        block = reader.read(index)
        assert block.shape == (stop - start, len(GROUPS), LOGITS.shape[2])
        assert np.array_equal(block, np.asarray(store.logits[start:stop]))
    again = pickle.loads(pickle.dumps(reader))  # what a Dask worker process gets
    assert np.array_equal(again.read(2), np.asarray(store.logits[2000:2500]))
    with pytest.raises(IndexError):
        reader.read(3)
