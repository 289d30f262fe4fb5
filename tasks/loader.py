"""Batches of frame windows read chunk by chunk from a dataset store's Zarr features.

A *crop* is a run of at most `crop` frames of one sequence inside one Zarr chunk. The encoder
sees each crop with `context` frames on either side; those come from the same sequence only, and
at a sequence's first and last frame the window is padded by repeating that frame. So a frame's
window never crosses a sequence border, and an item (a one-frame sequence) is a crop of one frame.

Reading: an epoch shuffles the order of the chunks, reads `buffer` chunks at a time (each chunk
once, as one contiguous slice), shuffles the crops of those chunks together and emits batches;
no per-row random Zarr reads. Context frames that lie in a neighbouring chunk come from a small
halo cache filled by the one sequential pass (`scan_features`) that also computes the feature
statistics.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from storage.dataset_store import DatasetStore


class FeatureArray(Protocol):
    """What the loader reads features from: a chunked array sliced along frames (a store's
    `features`, a Zarr array; numpy arrays with a `chunks` attribute would do too)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def chunks(self) -> tuple[int, ...]: ...

    def __getitem__(self, key: Any) -> Any: ...


@dataclass(frozen=True)
class Crops:
    """Crops as parallel arrays: frames [start, stop) of sequence `seq` (in one chunk)."""

    start: np.ndarray
    stop: np.ndarray
    seq: np.ndarray

    def __len__(self) -> int:
        return len(self.start)

    def take(self, index: np.ndarray) -> Crops:
        return Crops(self.start[index], self.stop[index], self.seq[index])


@dataclass
class WindowBatch:
    """x: (crops, crop + 2*context, n_features) float32; frames: (crops, crop) int64, -1 = padding."""

    x: np.ndarray
    frames: np.ndarray

    @property
    def n_frames(self) -> int:
        return int((self.frames >= 0).sum())


def sequence_of_frames(offsets: np.ndarray) -> np.ndarray:
    """The sequence index of every frame, (n_frames,) int64."""
    return np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))


def cut_crops(offsets: np.ndarray, chunk: int, crop: int, keep: np.ndarray,
              rng: np.random.Generator | None = None) -> Crops:
    """Cut the frames where `keep` is true into crops of at most `crop` frames.

    Cuts fall at every sequence start, every chunk boundary and every `crop` frames within a
    sequence, from a random phase per sequence when `rng` is given (so crops differ by epoch).
    A crop holds only kept frames' sequences: `keep` must be constant within a sequence or the
    crop is cut further where it changes.

    >>> c = cut_crops(np.array([0, 5, 12]), chunk=8, crop=4, keep=np.ones(12, bool))
    >>> c.start.tolist(), c.stop.tolist(), c.seq.tolist()
    ([0, 4, 5, 8, 9], [4, 5, 8, 9, 12], [0, 0, 1, 1, 1])
    """
    n = int(offsets[-1])
    seq = sequence_of_frames(offsets)
    pos = np.arange(n) - offsets[seq]
    phase = rng.integers(0, crop, size=len(offsets) - 1)[seq] if rng is not None else 0
    cut = ((pos - phase) % crop == 0) | (pos == 0) | (np.arange(n) % chunk == 0)
    cut[1:] |= keep[1:] != keep[:-1]
    starts = np.flatnonzero(cut)
    stops = np.append(starts[1:], n)
    mine = keep[starts]
    return Crops(starts[mine], stops[mine], seq[starts[mine]])


def keep_crops_with(crops: Crops, frame_mask: np.ndarray) -> Crops:
    """Only the crops holding at least one frame where `frame_mask` is true."""
    count = np.concatenate([[0], np.cumsum(frame_mask)])
    return crops.take(np.flatnonzero(count[crops.stop] > count[crops.start]))


def gather_windows(data: np.ndarray, base: np.ndarray, crops: Crops, offsets: np.ndarray,
                   crop: int, context: int) -> WindowBatch:
    """Build the windows of `crops` from frames held in memory.

    `data` holds frames; crop i's frames are found at `data[frame - base[i]]` (one base per crop,
    so several chunks can share one buffer). Positions past a crop's end are padding: frames -1.
    """
    n = len(crops)
    width = crop + 2 * context
    rel = np.arange(width) - context
    idx = crops.start[:, None] + rel[None, :]
    lo = offsets[crops.seq][:, None]
    hi = np.minimum(offsets[crops.seq + 1], crops.stop + context)[:, None] - 1
    idx = np.clip(idx, lo, hi)  # repeat the sequence's edge frames; beyond the crop+context unused
    x = data[idx - base[:, None]]
    frames = crops.start[:, None] + np.arange(crop)[None, :]
    frames = np.where(frames < crops.stop[:, None], frames, -1)
    return WindowBatch(x.reshape(n, width, -1).astype(np.float32, copy=False), frames)


@dataclass
class FeatureScan:
    """What one sequential pass over the features gives: statistics and chunk halos."""

    mean: np.ndarray
    std: np.ndarray
    n_features: int
    diff_std: np.ndarray  # std of the central difference (x[t+1] - x[t-1]) / 2 within sequences
    chunk: int
    context: int
    before: dict[int, np.ndarray] = field(default_factory=dict)  # chunk -> frames [c0 - k, c0)
    after: dict[int, np.ndarray] = field(default_factory=dict)  # chunk -> frames [c1, c1 + k)
    seconds: float = 0.0


def scan_features(features: FeatureArray, offsets: np.ndarray, context: int, stats_mask: np.ndarray) -> FeatureScan:
    """Read the features once, in order: mean and std over `stats_mask` frames, the std of their
    central differences within sequences (the temporal encoder's velocity inputs), and the halos."""
    t0 = time.perf_counter()
    n_frames = int(offsets[-1])
    chunk = int(features.chunks[0])
    n_chunks = -(-n_frames // chunk)
    total = None
    sq = None
    dsq = None
    count = dcount = 0
    seq = sequence_of_frames(offsets)
    tail = np.zeros((0, 0), np.float32)
    scan = FeatureScan(np.zeros(0), np.zeros(0), 0, np.zeros(0), chunk, context)
    pending: list[tuple[int, list[np.ndarray], int]] = []  # chunks still collecting their after-halo
    for c in range(n_chunks):
        c0, c1 = c * chunk, min(n_frames, (c + 1) * chunk)
        block = np.asarray(features[c0:c1], dtype=np.float64).reshape(c1 - c0, -1)
        if total is None:
            total, sq, dsq = (np.zeros(block.shape[1]) for _ in range(3))
            tail = np.zeros((0, block.shape[1]), np.float32)
        m = stats_mask[c0:c1]
        total += block[m].sum(axis=0)
        sq += (block[m] ** 2).sum(axis=0)
        count += int(m.sum())
        if len(block) > 2:  # central differences inside this block and inside one sequence
            s = seq[c0:c1]
            dm = m[1:-1] & (s[:-2] == s[2:])
            diff = (block[2:] - block[:-2])[dm] / 2
            dsq += (diff ** 2).sum(axis=0)
            dcount += len(diff)
        if context:
            scan.before[c] = tail[-context:] if len(tail) else tail
            still = []
            for j, parts, need in pending:
                parts.append(block[:need].astype(np.float32))
                need -= len(parts[-1])
                if need > 0:
                    still.append((j, parts, need))
                else:
                    scan.after[j] = np.concatenate(parts)
            pending = [*still, (c, [], context)]
            tail = np.concatenate([tail, block[-context:].astype(np.float32)])[-context:]
    for j, parts, _ in pending:
        width = 0 if total is None else len(total)
        scan.after[j] = np.concatenate(parts) if parts else np.zeros((0, width), np.float32)
    count = max(count, 1)
    mean = (total if total is not None else np.zeros(0)) / count
    var = np.maximum((sq if sq is not None else np.zeros(0)) / count - mean ** 2, 0.0)
    scan.mean, scan.std, scan.n_features = mean, np.sqrt(var), len(mean)
    scan.diff_std = np.sqrt((dsq if dsq is not None else np.zeros(0)) / max(dcount, 1))
    scan.seconds = time.perf_counter() - t0
    return scan


class ChunkReader:
    """Reads one chunk of features with its halos: (frames c0-k .. c1+k, base frame)."""

    def __init__(self, features: FeatureArray, n_frames: int, scan: FeatureScan) -> None:
        self.features, self.n_frames, self.scan = features, n_frames, scan
        self.bytes_read = 0

    def read(self, c: int) -> tuple[np.ndarray, int]:
        chunk = self.scan.chunk
        c0, c1 = c * chunk, min(self.n_frames, (c + 1) * chunk)
        block = np.asarray(self.features[c0:c1], dtype=np.float32).reshape(c1 - c0, -1)
        self.bytes_read += block.nbytes
        if not self.scan.context:
            return block, c0
        before, after = self.scan.before[c], self.scan.after[c]
        return np.concatenate([before, block, after]), c0 - len(before)


def iter_batches(reader: ChunkReader, crops: Crops, offsets: np.ndarray, crop: int, batch_crops: int,
                 buffer: int, rng: np.random.Generator | None) -> Iterator[WindowBatch]:
    """Batches of windows: chunks in random order, crops shuffled within `buffer` chunks.

    Without `rng`, chunks and crops keep their order (evaluation). Every batch holds
    `batch_crops` crops but the last.
    """
    chunk, context = reader.scan.chunk, reader.scan.context
    of_chunk = crops.start // chunk
    chunks = np.unique(of_chunk)
    if rng is not None:
        chunks = rng.permutation(chunks)
    pend_x = np.zeros((0, crop + 2 * context, reader.scan.n_features), np.float32)
    pend_f = np.zeros((0, crop), np.int64)
    for g in range(0, len(chunks), buffer):
        datas, bases, picked = [], [], []
        offset = 0
        for c in chunks[g: g + buffer]:
            data, base = reader.read(int(c))
            mine = np.flatnonzero(of_chunk == c)
            datas.append(data)
            bases.append(np.full(len(mine), base - offset))
            picked.append(mine)
            offset += len(data)
        sel = crops.take(np.concatenate(picked))
        bases_all = np.concatenate(bases)
        order = rng.permutation(len(sel)) if rng is not None else np.arange(len(sel))
        windows = gather_windows(np.concatenate(datas), bases_all[order], sel.take(order), offsets, crop, context)
        x, f = np.concatenate([pend_x, windows.x]), np.concatenate([pend_f, windows.frames])
        full = len(x) - len(x) % batch_crops
        for i in range(0, full, batch_crops):
            yield WindowBatch(x[i: i + batch_crops], f[i: i + batch_crops])
        pend_x, pend_f = x[full:], f[full:]
    if len(pend_f):
        yield WindowBatch(pend_x, pend_f)


class ChunkCache:
    """The last few decoded chunks of a features array, so that reading ranges in order (with their
    context frames) decodes every chunk once. Zarr decodes whole chunks anyway. Thread-safe:
    ranges predicted on several threads share it (a chunk may then be decoded twice, never wrong).
    """

    def __init__(self, features: FeatureArray, keep: int = 3) -> None:
        self.features, self.keep = features, keep
        self.chunk = int(features.chunks[0])
        self.chunks: dict[int, np.ndarray] = {}
        self.decoded = 0
        self._lock = threading.Lock()

    def _get(self, c: int) -> np.ndarray:
        with self._lock:
            block = self.chunks.get(c)
        if block is None:
            c0 = c * self.chunk
            raw = np.asarray(self.features[c0: c0 + self.chunk], dtype=np.float32)
            block = raw.reshape(len(raw), -1)
            with self._lock:
                self.chunks[c] = block
                self.decoded += 1
                while len(self.chunks) > self.keep:
                    del self.chunks[next(iter(self.chunks))]
        return block

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Frames [lo, hi) as (hi - lo, n_features) float32."""
        parts = []
        for c in range(lo // self.chunk, -(-hi // self.chunk)):
            c0 = c * self.chunk
            parts.append(self._get(c)[max(lo, c0) - c0: min(hi, c0 + self.chunk) - c0])
        if not parts:
            return np.zeros((0, int(np.prod(self.features.shape[1:]))), np.float32)
        return np.concatenate(parts)


def read_range(store: DatasetStore, start: int, stop: int, context: int, crop: int,
               cache: ChunkCache | None = None) -> WindowBatch:
    """Windows for frames [start, stop) of a store, reading the context frames they need.

    Reads frames [start - context, stop + context) (clipped to the store), through `cache` when
    given; windows are padded at sequence edges exactly as in training.
    """
    offsets = store.offsets
    n = store.n_frames
    if not 0 <= start <= stop <= n:
        raise ValueError(f"frames [{start}, {stop}) outside the store's {n} frames")
    lo, hi = max(0, start - context), min(n, stop + context)
    if cache is not None:
        data = cache.read(lo, hi)
    else:
        data = np.asarray(store.features[lo:hi], dtype=np.float32).reshape(hi - lo, -1)
    # only the sequences that overlap the range, so a call costs what its range holds
    s0 = int(np.searchsorted(offsets, start, side="right")) - 1
    s1 = max(s0 + 1, int(np.searchsorted(offsets, stop, side="left")))
    sub = offsets[s0: s1 + 1]
    keep = np.zeros(int(sub[-1] - sub[0]), bool)
    keep[start - sub[0]: stop - sub[0]] = True
    local = cut_crops(sub - sub[0], chunk=max(len(keep), 1), crop=crop, keep=keep)
    crops = Crops(local.start + sub[0], local.stop + sub[0], local.seq + s0)
    return gather_windows(data, np.full(len(crops), lo), crops, offsets, crop, context)
