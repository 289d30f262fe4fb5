"""Annotator distances from predicted probabilities, accumulated chunk by chunk with Dask.

p[f, a, :] = softmax(logits[f, a, :]) is annotator a's predicted class distribution for frame
f. Over the F frames and C classes:

- euclidean: D[a, b] = sqrt(sum_f sum_c (p[f,a,c] - p[f,b,c])^2), the MABe notebook's
  quantity (it sums `pdist` per sequence and takes the root). It is computed from the Gram
  matrix G[a, b] = sum_f sum_c p[f,a,c] p[f,b,c] as D^2 = G[a,a] + G[b,b] - 2 G[a,b].
- cosine: 1 - G[a,b] / sqrt(G[a,a] G[b,b]), the cosine distance between the two annotators'
  whole (F*C)-long probability vectors (same Gram sums).
- jensenshannon: sqrt(mean_f JSD(p[f,a], p[f,b])), the root of the per-frame Jensen-Shannon
  divergence (natural log; scipy's `jensenshannon(p, q) ** 2`) averaged over frames.

Each is a function of (A, A) float64 sums over frames (a `Statistic`: "gram" or "js"), so sums
over disjoint frame ranges add up: they are computed per Dask task, in one pass over the logits, and kept per
frame range in the prediction store (`partials/`) so that a new batch costs only its own frames.

A store pass (`compute_store_range_sums`) is one Dask task per few whole store chunks: each
reads its chunks with `storage.prediction_store.ChunkReader` (every chunk CRC-checked once,
decompressed into a buffer the thread reuses, no copy into a Dask chunk) and sums them at once,
while the chunk is still in cache. Per chunk the work is compiled (Numba, releasing the GIL)
and runs on tiles of frames that stay in L1, in float64: float16 logits go through a
65,536-entry table of exp(x) (no conversion, no max shift) unless a tile's values could
overflow, in which case the chunk takes the usual max-shifted softmax. Memory is a few chunks
per thread whatever the number of frames (benchmarks/distances.py measures it, the speed against
the MABe notebook's method and the throughput against a plain Zarr read).

Metrics are registered in `configs.analyze.METRICS` (name -> a `DistanceMetric` here: the
statistic it sums and the distance it makes of the sums). A new metric is one `DistanceMetric`
(with its own `Statistic` if it needs other sums) and one `register` line there.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any, TypedDict

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from scipy.special import entr
from threadpoolctl import threadpool_limits

from configs.analyze import METRICS
from storage.prediction_store import ChunkReader, PredictionStore, subtract_ranges
from storage.results.analyze import PartialSums
from tasks.registry import load

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)

BLOCK_FRAMES = 8192  # frames per in-cache block (A * C * 8 KiB * 8 bytes of float64)
DOT_LOOP_MAX_ANNOTATORS = 16  # NumPy path: up to here, pairwise dot products beat one small GEMM
TARGET_READ_BYTES = 16 << 20


# ------------------------------------------------------------------ per-chunk kernels
@cache
def _exp_table() -> np.ndarray:
    """exp(x) in float64 for every float16 bit pattern (inf/nan where x is)."""
    values = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.exp(values)


def softmax_block(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Probabilities of a (n, A, C) block of logits, returned as (A, C, n) float64."""
    n, n_ann, n_cls = x.shape
    p = np.empty((n_ann, n_cls, n)) if out is None else out
    total = np.empty((n_ann, n))
    if x.dtype == np.float16:
        np.take(_exp_table(), x.view(np.uint16).transpose(1, 2, 0), out=p, mode="clip")
        np.sum(p, axis=1, out=total)
        with np.errstate(invalid="ignore"):
            safe = bool(total.min() > 1e-280) and bool(total.max() < 1e280)
        if safe:
            np.reciprocal(total, out=total)
            np.multiply(p, total[:, None, :], out=p)
            return p
    np.copyto(p, x.transpose(1, 2, 0))
    if not np.isfinite(p).all():
        raise ValueError("non-finite logits")
    top = p.max(axis=1)
    np.subtract(p, top[:, None, :], out=p)
    np.exp(p, out=p)
    np.sum(p, axis=1, out=total)
    np.reciprocal(total, out=total)
    np.multiply(p, total[:, None, :], out=p)
    return p


def _gram_numpy(p: np.ndarray, out: np.ndarray) -> None:
    n_ann = p.shape[0]
    y = p.reshape(n_ann, -1)
    if n_ann <= DOT_LOOP_MAX_ANNOTATORS:
        for a in range(n_ann):
            for b in range(a, n_ann):
                out[a, b] += np.dot(y[a], y[b])
    else:
        out += np.triu(y @ y.T)


def _js_numpy(p: np.ndarray, out: np.ndarray) -> None:
    n_ann = p.shape[0]
    own = entr(p).sum(axis=1)  # (A, n) entropy of each annotator's distribution per frame
    for a in range(n_ann - 1):
        mix = 0.5 * (p[a][None] + p[a + 1:])
        js = entr(mix).sum(axis=1) - 0.5 * (own[a][None] + own[a + 1:])
        out[a, a + 1:] += js.sum(axis=1)


def block_sums_numpy(logits: np.ndarray, stat: str) -> np.ndarray:
    """`block_sums` in plain NumPy (the fallback without Numba, and a cross-check)."""
    out = np.zeros((logits.shape[1],) * 2)
    return _softmax_sums(logits, {"gram": _gram_numpy, "js": _js_numpy}[stat], out)


def _softmax_sums(logits: np.ndarray, add: Any, out: np.ndarray) -> np.ndarray:
    """Softmax cache-sized blocks of frames, let `add` accumulate each into `out` (upper
    triangle), and return the symmetric sums."""
    n, n_ann, n_cls = logits.shape
    buffer = np.empty((n_ann, n_cls, min(n, BLOCK_FRAMES)))
    for start in range(0, n, BLOCK_FRAMES):
        x = logits[start: start + BLOCK_FRAMES]
        add(softmax_block(x, buffer if len(x) == buffer.shape[2] else None), out)
    return out + np.triu(out, 1).T


def block_sums(logits: np.ndarray, stat: str) -> np.ndarray:
    """The (A, A) float64 sums of `stat` ("gram" or "js") over a (frames, A, C) block of logits.

    With Numba (a dependency of umap-learn) the work runs in compiled loops that release the
    GIL: float16 logits in one fused pass through the exp table; other dtypes get a NumPy
    softmax per cache-sized block, then compiled sums. Without Numba, `block_sums_numpy`.
    """
    if _kernels is None:
        return block_sums_numpy(logits, stat)
    n, n_ann, _ = logits.shape
    out = np.zeros((n_ann, n_ann))
    if stat == "gram" and logits.dtype == np.float16:
        bits = np.ascontiguousarray(logits).view(np.uint16)
        if _kernels.gram_from_table(bits, _exp_table(), out) == n:
            return out + np.triu(out, 1).T
        out[:] = 0.0  # a value outside the table's safe range: take the shifted softmax
    add = {"gram": _kernels.gram_from_probabilities, "js": _kernels.js_from_probabilities}[stat]
    return _softmax_sums(logits, add, out)


def gram_sums(logits: np.ndarray) -> np.ndarray:
    """G[a, b] = sum over frames and classes of p[f,a,c] p[f,b,c]."""
    return block_sums(logits, "gram")


def js_sums(logits: np.ndarray) -> np.ndarray:
    """Sum over frames of the Jensen-Shannon divergence (natural log) between a's and b's p[f]."""
    return block_sums(logits, "js")


def _chunk_sums(block: np.ndarray, stat: Statistic) -> np.ndarray:
    return stat.sums(block)[None]


TILE = 64  # frames per tile in the compiled kernels (A * C * TILE float64 stay in L1)
FASTMATH = {"reassoc", "contract", "nsz"}  # vectorised sums; NaN and inf keep their meaning


def _gram_from_table(bits: np.ndarray, table: np.ndarray, out: np.ndarray) -> int:
    """Upper-triangle Gram sums from float16 bit patterns; returns the frames done (n on success).

    Returns -1, leaving `out` alone, when some annotator's exp-sum leaves (1e-280, 1e280).
    Per tile, the table lookups run frame by frame along the contiguous (annotator, class)
    axis into rows p[annotator * C + class] of the tile (a third faster than looking up one
    annotator's classes at a time); the sums then run along contiguous rows.
    """
    n, n_ann, n_cls = bits.shape
    width = n_ann * n_cls
    flat = bits.reshape(n, width)
    p = np.empty((width, TILE))
    total = np.empty(TILE)
    acc = np.zeros((n_ann, n_ann))
    for f0 in range(0, n, TILE):
        m = min(TILE, n - f0)
        for t in range(m):
            for j in range(width):
                p[j, t] = table[flat[f0 + t, j]]
        for a in range(n_ann):
            row = a * n_cls
            for t in range(m):
                total[t] = 0.0
            for c in range(n_cls):
                for t in range(m):
                    total[t] += p[row + c, t]
            for t in range(m):
                if not (total[t] > 1e-280 and total[t] < 1e280):
                    return -1
                total[t] = 1.0 / total[t]
            for c in range(n_cls):
                for t in range(m):
                    p[row + c, t] *= total[t]
        for a in range(n_ann):
            for b in range(a, n_ann):
                s = 0.0
                for c in range(n_cls):
                    ra, rb = a * n_cls + c, b * n_cls + c
                    for t in range(m):
                        s += p[ra, t] * p[rb, t]
                acc[a, b] += s
    out += acc
    return n


def _gram_from_probabilities(p: np.ndarray, out: np.ndarray) -> None:
    """Add the upper-triangle Gram sums of (A, C, n) probabilities to `out`."""
    n_ann, n_cls, n = p.shape
    for a in range(n_ann):
        for b in range(a, n_ann):
            s = 0.0
            for c in range(n_cls):
                for t in range(n):
                    s += p[a, c, t] * p[b, c, t]
            out[a, b] += s


def _js_from_probabilities(p: np.ndarray, out: np.ndarray) -> None:
    """Add the upper-triangle sums over frames of the Jensen-Shannon divergence (natural log)."""
    n_ann, n_cls, n = p.shape
    own = np.zeros((n_ann, n))
    for a in range(n_ann):
        for c in range(n_cls):
            for t in range(n):
                v = p[a, c, t]
                if v > 0.0:
                    own[a, t] -= v * np.log(v)
    for a in range(n_ann):
        for b in range(a + 1, n_ann):
            s = 0.0
            for t in range(n):
                h = 0.0
                for c in range(n_cls):
                    v = 0.5 * (p[a, c, t] + p[b, c, t])
                    if v > 0.0:
                        h -= v * np.log(v)
                s += h - 0.5 * (own[a, t] + own[b, t])
            out[a, b] += s


class _Kernels:
    """The compiled kernels (compiled on first use, cached on disk by Numba)."""

    def __init__(self, numba: Any) -> None:
        jit = numba.njit(nogil=True, cache=True, fastmath=FASTMATH)
        self.gram_from_table = jit(_gram_from_table)
        self.gram_from_probabilities = jit(_gram_from_probabilities)
        self.js_from_probabilities = jit(_js_from_probabilities)


def _load_kernels() -> _Kernels | None:
    try:
        import numba
    except ImportError:  # no Numba: NumPy does the work
        return None
    return _Kernels(numba)


_kernels = _load_kernels()


# ------------------------------------------------------------------------- metrics
@dataclass(frozen=True)
class Statistic:
    """(A, A) float64 sums over frames that distances are made of; sums over disjoint frame
    ranges add up. `name` names its partial sums in the prediction store (`partials/`)."""

    name: str
    sums: Callable[[np.ndarray], np.ndarray]  # (frames, A, C) logits -> (A, A) sums


@dataclass(frozen=True)
class DistanceMetric:
    """A distance between annotators: the statistic it sums and `finish(sums, n_frames)`, the
    (A, A) distances made of the sums (symmetrised, zero diagonal afterwards)."""

    stat: Statistic
    finish: Callable[[np.ndarray, int], np.ndarray]


def _euclidean(gram: np.ndarray, n_frames: int) -> np.ndarray:
    diag = np.diag(gram)
    return np.sqrt(np.maximum(diag[:, None] + diag[None, :] - 2.0 * gram, 0.0))


def _cosine(gram: np.ndarray, n_frames: int) -> np.ndarray:
    diag = np.diag(gram)
    with np.errstate(invalid="ignore", divide="ignore"):
        dist = np.clip(1.0 - gram / np.sqrt(np.outer(diag, diag)), 0.0, 2.0)
    dist[~np.isfinite(dist)] = 1.0
    return dist


def _jensenshannon(js: np.ndarray, n_frames: int) -> np.ndarray:
    return np.sqrt(np.maximum(js / max(n_frames, 1), 0.0))


GRAM = Statistic("gram", gram_sums)
JS = Statistic("js", js_sums)
EUCLIDEAN = DistanceMetric(GRAM, _euclidean)
COSINE = DistanceMetric(GRAM, _cosine)
JENSENSHANNON = DistanceMetric(JS, _jensenshannon)


def distance_metric(name: str) -> DistanceMetric:
    """The registered metric of that name (`configs.analyze.METRICS`); ValueError if unknown."""
    metric = load(METRICS[name])
    if not isinstance(metric, DistanceMetric):
        raise TypeError(f"{METRICS[name].target} is not a DistanceMetric")
    return metric


# ---------------------------------------------------------------------- dask layer
def range_sums(logits: da.Array, ranges: Sequence[tuple[int, int]], stat: Statistic) -> list[da.Array]:
    """Lazy (A, A) sums of `stat` over each frame range of a Dask array of logits."""
    n_ann = logits.shape[1]
    out = []
    for start, stop in ranges:
        part = logits[start:stop]
        per_chunk = part.map_blocks(
            _chunk_sums, stat, dtype=np.float64,
            chunks=((1,) * part.numblocks[0], (n_ann,), (n_ann,)),
            token=f"annotator-{stat.name}-sums",
        )
        out.append(per_chunk.sum(axis=0))
    return out


def compute_range_sums(logits: da.Array, ranges: Sequence[tuple[int, int]], stat: Statistic,
                       compute_kwargs: ComputeKwargs | None = None) -> list[np.ndarray]:
    """Sums of `stat` over each range, in one pass over the chunks (one `dask.compute`)."""
    if not ranges:
        return []
    lazy = range_sums(logits, ranges, stat)
    with threadpool_limits(limits=1, user_api="blas"):  # Dask threads already fill the cores
        return [np.asarray(x) for x in dask.compute(*lazy, **(compute_kwargs or ComputeKwargs(scheduler="threads")))]


def distances_from_sums(sums: np.ndarray, n_frames: int, metric: str) -> np.ndarray:
    """The (A, A) distance matrix from the summed statistic of `metric` over n_frames frames."""
    dist = np.array(distance_metric(metric).finish(sums, n_frames), dtype=np.float64)
    np.fill_diagonal(dist, 0.0)
    return 0.5 * (dist + dist.T)


def as_dask(logits: np.ndarray | da.Array, chunk_frames: int) -> da.Array:
    """A Dask array over frames; an in-memory array is wrapped without hashing it."""
    if isinstance(logits, da.Array):
        return logits
    return da.from_array(logits, chunks=(chunk_frames, *logits.shape[1:]), name=False)


def annotator_distances(logits: np.ndarray | da.Array, metric: str = "euclidean",
                        chunk_frames: int = 65536,
                        compute_kwargs: ComputeKwargs | None = None) -> np.ndarray:
    """Distances between annotators from (frames, A, C) logits (NumPy or Dask), in one pass."""
    x = as_dask(logits, chunk_frames)
    stat = distance_metric(metric).stat
    [sums] = compute_range_sums(x, [(0, x.shape[0])], stat, compute_kwargs)
    return distances_from_sums(sums, x.shape[0], metric)


# --------------------------------------------------------------------- schedulers
class ComputeKwargs(TypedDict):
    """Keyword arguments of `dask.compute`: a scheduler name ("threads", "sync") or a client."""

    scheduler: str | Client


@contextmanager
def dask_scheduler(address: str | None) -> Iterator[ComputeKwargs]:
    """The `dask.compute` keyword arguments for a scheduler setting.

    None or "threads": local threads; "sync": one thread (debugging); "local-cluster": a
    `distributed.LocalCluster` in this process for the duration; anything else: the address of
    a running scheduler (`tcp://host:8786`), which must see the store's path.
    """
    if address in (None, "threads", "sync"):
        yield {"scheduler": address or "threads"}
        return
    from distributed import Client, LocalCluster

    if address == "local-cluster":
        with LocalCluster(n_workers=1, threads_per_worker=os.cpu_count() or 1, processes=False,
                          dashboard_address="127.0.0.1:0") as cluster, \
                Client(cluster, set_as_default=False) as client:
            yield {"scheduler": client}
        return
    with Client(address, set_as_default=False, timeout="30s") as client:
        yield {"scheduler": client}


def describe_scheduler(address: str | None) -> str:
    return "threads" if address in (None, "threads") else address


# -------------------------------------------------------------- store (thin layer)
@dataclass
class StoreDistances:
    """Distances of a prediction store, with what was reused and what was computed."""

    matrix: np.ndarray
    metric: str
    stat: str
    sums: np.ndarray
    n_frames: int
    reused: list[tuple[int, int]] = field(default_factory=list)
    computed: list[tuple[int, int]] = field(default_factory=list)
    seconds: float = 0.0
    read_chunk_frames: int = 0

    @property
    def frames_computed(self) -> int:
        return sum(b - a for a, b in self.computed)

    def report(self) -> PartialSums:
        return PartialSums(
            metric=self.metric, stat=self.stat, n_frames=self.n_frames,
            partials_reused=self.reused, partials_computed=self.computed,
            frames_computed=self.frames_computed, seconds=round(self.seconds, 3),
            frames_per_second=self.frames_computed / self.seconds if self.seconds and self.computed else None,
            read_chunk_frames=self.read_chunk_frames,
        )


def read_chunks(store: PredictionStore, read_chunk_frames: int | None = None) -> int:
    """Frames per Dask chunk: a whole number of store chunks, about 16 MiB of logits."""
    chunk = store.chunk_frames
    if read_chunk_frames:
        return max(chunk, (read_chunk_frames // chunk) * chunk)
    per_chunk = chunk * store.n_annotators * store.n_classes * store.logits.dtype.itemsize
    return chunk * max(1, TARGET_READ_BYTES // max(per_chunk, 1))


def store_logits(store: PredictionStore, read_chunk_frames: int | None = None) -> da.Array:
    """The store's logits as a Dask array cut to its frames."""
    frames = read_chunks(store, read_chunk_frames)
    return da.from_zarr(store.logits, chunks=(frames, store.n_annotators, store.n_classes))[: store.n_frames]


def _store_part_sums(reader: ChunkReader, chunks: Sequence[int], ranges: Sequence[tuple[int, int]],
                     stat: Statistic) -> np.ndarray:
    """(len(ranges), A, A) sums of `stat` over the frames of `chunks` that fall in each range."""
    out: np.ndarray | None = None
    for index in chunks:
        block = reader.read(index)
        c0 = index * reader.chunk_frames
        c1 = c0 + len(block)
        for r, (start, stop) in enumerate(ranges):
            a, b = max(start, c0), min(stop, c1)
            if a < b:
                sums = stat.sums(block[a - c0: b - c0])
                if out is None:
                    out = np.zeros((len(ranges), *sums.shape))
                out[r] += sums
    if out is None:
        raise ValueError(f"chunks {list(chunks)[:3]} hold no frame of the ranges {list(ranges)[:3]}")
    return out


def _add(*parts: np.ndarray) -> np.ndarray:
    return np.sum(parts, axis=0)


def compute_store_range_sums(store: PredictionStore, ranges: Sequence[tuple[int, int]], stat: Statistic,
                             compute_kwargs: ComputeKwargs | None = None,
                             read_chunk_frames: int | None = None) -> list[np.ndarray]:
    """Sums of `stat` over each frame range of the store's logits, in one Dask pass.

    One task per `read_chunks` frames of whole store chunks: each reads its chunks with a
    `ChunkReader` (every chunk CRC-checked once, decompressed into a reused buffer) and sums
    each range's frames in them, chunk by chunk; a tree of additions (16 at a time) follows.
    """
    if not ranges:
        return []
    chunk = store.chunk_frames
    needed = sorted({i for start, stop in ranges for i in range(start // chunk, -(-stop // chunk))})
    per_task = max(1, read_chunks(store, read_chunk_frames) // chunk)
    reader = ChunkReader(store, "logits")
    ranges = [(int(a), int(b)) for a, b in ranges]
    token = tokenize(reader, ranges, stat.name)
    level = [dask.delayed(_store_part_sums, pure=True)(reader, needed[k: k + per_task], ranges, stat,
                                                       dask_key_name=f"annotator-{stat.name}-sums-{token}-{k}")
             for k in range(0, len(needed), per_task)]
    depth = 0
    while len(level) > 1:
        depth += 1
        level = [dask.delayed(_add, pure=True)(*level[k: k + 16],
                                               dask_key_name=f"annotator-{stat.name}-add-{token}-{depth}-{k}")
                 for k in range(0, len(level), 16)]
    with threadpool_limits(limits=1, user_api="blas"):  # Dask threads already fill the cores
        [total] = dask.compute(*level, **(compute_kwargs or ComputeKwargs(scheduler="threads")))
    return [np.asarray(total[r]) for r in range(len(ranges))]


def store_distances(store: PredictionStore, metric: str = "euclidean",
                    compute_kwargs: ComputeKwargs | None = None,
                    read_chunk_frames: int | None = None, keep_partials: bool = True) -> StoreDistances:
    """Annotator distances of a complete prediction store, reusing its stored partial sums.

    One partial per segment (the frames each dataset batch added); segments without one are
    computed in one Dask pass and stored (when `keep_partials` and the store is writable).
    """
    if not store.complete:
        raise ValueError(f"prediction store {store.uri} is incomplete: frames {store.missing_ranges()[:3]} missing")
    stat = distance_metric(metric).stat
    t0 = time.perf_counter()
    segments = store.segments or [(0, store.n_frames)]
    segments += subtract_ranges([(0, store.n_frames)], segments)  # frames outside every segment, if any
    have = store.partials(stat.name)
    reused = [r for r in segments if r in have]
    todo = [r for r in segments if r not in have]
    frames = read_chunks(store, read_chunk_frames)
    computed = compute_store_range_sums(store, todo, stat, compute_kwargs, frames)
    if keep_partials:
        try:
            for (start, stop), sums in zip(todo, computed, strict=True):
                store.write_partial(stat.name, start, stop, sums)
        except (OSError, ValueError) as err:  # a read-only store: the sums are just not kept
            log.warning("could not keep partial sums in %s: %s", store.uri, err)
    total = np.zeros((store.n_annotators, store.n_annotators))
    for r in reused:
        total += have[r]
    for sums in computed:
        total += sums
    seconds = time.perf_counter() - t0
    log.info("annotator %s sums: %d range(s) reused, %d computed (%d frames) in %.2f s",
             stat.name, len(reused), len(todo), sum(b - a for a, b in todo), seconds)
    return StoreDistances(distances_from_sums(total, store.n_frames, metric), metric, stat.name, total,
                          store.n_frames, reused, todo, seconds, frames)
