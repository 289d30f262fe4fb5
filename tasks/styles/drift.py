"""Drift: each annotator's agreement with its reference per dataset batch and along the position in
its sequences (start, middle, end thirds), with a flag when it moves more than chance would.

Per annotator and grouping, the compared frames form a bins x (agree, disagree) table; Pearson's
chi-squared test of homogeneity (`scipy.stats.chi2_contingency`) says whether agreement is the same
in every bin. Bins without compared frames are left out of the test; with fewer than two bins left,
or when the annotator agrees everywhere or nowhere (nothing can differ), p is None or 1. A flag
needs p < level / n_annotators (Bonferroni over the annotators). Frames of adjacent positions are
not independent (bouts), so p is optimistic for sequences; the correction and the thirds (wide
bins) keep that in check, and the agreement per bin is reported beside p for judging.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from storage.dataset_store import DatasetStore
from storage.results.styles import AnnotatorDrift, Drift, DriftBin, DriftFlag
from tasks.styles.consensus import Reference

POSITIONS = ["start", "middle", "end"]


def frame_batches(dataset: DatasetStore) -> np.ndarray:
    """Which committed batch added each frame (its manifest index); frames a later batch only
    relabelled keep the batch that added them."""
    out = np.full(dataset.n_frames, -1, np.int64)
    for entry in dataset.batches:
        start, stop = entry["frames"]
        out[start:min(stop, dataset.n_frames)] = int(entry["index"])
    return out


def frame_positions(offsets: np.ndarray) -> np.ndarray:
    """0 / 1 / 2 (start / middle / end third of its sequence) per frame; -1 in one-frame sequences.

    Frame i of a sequence of length L is in third floor(3 i / L)."""
    offsets = np.asarray(offsets, np.int64)
    lengths = np.diff(offsets)
    n = int(offsets[-1]) if len(offsets) else 0
    if not n:
        return np.zeros(0, np.int64)
    starts = np.repeat(offsets[:-1], lengths)
    length = np.repeat(lengths, lengths)
    within = np.arange(n, dtype=np.int64) - starts
    out = (3 * within) // np.maximum(length, 1)
    out[length < 2] = -1
    return out


def _homogeneity(correct: np.ndarray, groups: np.ndarray, names: list[str]) -> tuple[list[DriftBin], float | None]:
    """Agreement per group (codes 0..len(names)-1; others ignored) and the chi-squared p of
    homogeneity."""
    keep = (groups >= 0) & (groups < len(names))
    g, ok = groups[keep], correct[keep]
    n = np.bincount(g, minlength=len(names))
    hits = np.bincount(g, weights=ok.astype(np.float64), minlength=len(names))
    bins = [DriftBin(name=name, n=int(n[i]), agreement=hits[i] / n[i] if n[i] else None)
            for i, name in enumerate(names)]
    used = n > 0
    if used.sum() < 2:
        return bins, None
    table = np.stack([hits[used], n[used] - hits[used]], axis=1)
    if (table.sum(axis=0) == 0).any():  # agrees everywhere or nowhere: nothing differs
        return bins, 1.0
    return bins, float(stats.chi2_contingency(table, correction=False).pvalue)


def drift(ref: Reference, batch_of_frame: np.ndarray | None, position_of_frame: np.ndarray | None,
          annotators: list[str], level: float) -> Drift:
    """Each annotator's agreement with its reference by batch (`frame_batches`) and by position in
    its sequences (`frame_positions`); either may be None (one batch; one-frame items)."""
    alpha = level / max(len(annotators), 1)
    batch_ids: list[int] = []
    batch_code: np.ndarray | None = None
    if batch_of_frame is not None:
        batch_of_frame = np.asarray(batch_of_frame, np.int64)
        batch_ids = sorted(int(b) for b in np.unique(batch_of_frame[batch_of_frame >= 0]))
        lookup = np.full(max(batch_ids, default=0) + 1, -1, np.int64)
        lookup[batch_ids] = np.arange(len(batch_ids))
        batch_code = np.where(batch_of_frame >= 0, lookup[np.maximum(batch_of_frame, 0)], -1)
    position = None if position_of_frame is None else np.asarray(position_of_frame, np.int64)
    if position is not None and not (position >= 0).any():
        position = None
    out = []
    for a, name in enumerate(annotators):
        rows = ref.rows[a]
        correct = ref.labels[a] == ref.reference[a]
        by_batch: list[DriftBin] = []
        by_position: list[DriftBin] = []
        p_batch = p_position = None
        if batch_code is not None:
            by_batch, p_batch = _homogeneity(correct, batch_code[rows], [str(b) for b in batch_ids])
        if position is not None:
            by_position, p_position = _homogeneity(correct, position[rows], POSITIONS)
        flags: list[DriftFlag] = []
        if p_batch is not None and p_batch < alpha:
            flags.append("drift_batch")
        if p_position is not None and p_position < alpha:
            flags.append("drift_position")
        out.append(AnnotatorDrift(annotator=name, by_batch=by_batch, by_position=by_position,
                                  p_batch=p_batch, p_position=p_position, flags=flags))
    return Drift(alpha=alpha, annotators=out)
