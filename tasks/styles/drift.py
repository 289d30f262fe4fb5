"""Drift: each annotator's agreement with its reference per dataset batch and along the position in
its sequences (start, middle, end thirds), with a flag when it moves more than chance would.

Per annotator and grouping, the compared frames form a bins x (agree, disagree) table; Pearson's
chi-squared test of homogeneity (`scipy.stats.chi2_contingency`) says whether agreement is the same
in every bin. Frames of one sequence are not independent (a bout is agreed or missed as a whole,
and sequences differ in difficulty), and the plain test then sees drift everywhere: on the demo,
which has none, 6 of 8 annotators had p < 0.01 / 8 for arbitrary thirds of its sequences. So when
the frames' sequences are given, the statistic is divided by the Rao-Scott (1981) first-order
design effect of sampling whole sequences: per bin, the variance of its agreement as a ratio
estimate over the sequences in it, divided by the binomial variance; their mean, weighted by
frames and never below 1. One-frame items have a design effect of 1 (the plain test).

Bins without compared frames are left out of the test; with fewer than two bins left, p is None;
when the annotator agrees everywhere or nowhere (nothing can differ), p is 1. A flag needs
p < level / n_annotators (Bonferroni over the annotators); the agreement per bin is reported
beside p for judging the size of the change.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from storage.dataset_store import DatasetStore
from storage.results.styles import AnnotatorDrift, Drift, DriftBin, DriftFlag
from tasks.loader import sequence_of_frames as frame_sequences  # the sequence index of every frame
from tasks.styles.consensus import Reference

__all__ = ["POSITIONS", "design_effect", "drift", "frame_batches", "frame_positions", "frame_sequences"]

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


def design_effect(correct: np.ndarray, groups: np.ndarray, clusters: np.ndarray, n_groups: int) -> float:
    """Rao-Scott first-order design effect of the agreement rates per group when whole clusters
    (sequences) are sampled: the frame-weighted mean over groups of (ratio-estimate variance over
    the clusters) / (binomial variance), at least 1."""
    effects, weights = [], []
    for g in range(n_groups):
        inside = groups == g
        if not inside.any():
            continue
        _, c = np.unique(clusters[inside], return_inverse=True)
        n_c = np.bincount(c).astype(np.float64)
        y_c = np.bincount(c, weights=correct[inside].astype(np.float64))
        n, m = n_c.sum(), len(n_c)
        p = y_c.sum() / n
        binomial = p * (1 - p) / n
        if m < 2 or binomial <= 0:
            continue
        ratio = m / (m - 1) * float(((y_c - p * n_c) ** 2).sum()) / n**2
        effects.append(ratio / binomial)
        weights.append(n)
    if not effects:
        return 1.0
    return max(1.0, float(np.average(effects, weights=weights)))


def _homogeneity(correct: np.ndarray, groups: np.ndarray, names: list[str],
                 clusters: np.ndarray | None) -> tuple[list[DriftBin], float | None]:
    """Agreement per group (codes 0..len(names)-1; others ignored) and the p of the chi-squared
    homogeneity test, corrected for clusters (sequences) when they are given."""
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
    chi2, _, dof, _ = stats.chi2_contingency(table, correction=False)
    deff = 1.0 if clusters is None else design_effect(ok, g, clusters[keep], len(names))
    return bins, float(stats.chi2.sf(chi2 / deff, dof))


def drift(ref: Reference, batch_of_frame: np.ndarray | None, position_of_frame: np.ndarray | None,
          annotators: list[str], level: float, sequence_of_frame: np.ndarray | None = None) -> Drift:
    """Each annotator's agreement with its reference by batch (`frame_batches`) and by position in
    its sequences (`frame_positions`); either may be None (one batch; one-frame items).
    `sequence_of_frame` (`frame_sequences`) makes the tests count whole sequences as the sampled
    units; without it frames are taken as independent (right for one-frame items only)."""
    seq = None if sequence_of_frame is None else np.asarray(sequence_of_frame, np.int64)
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
        clusters = None if seq is None else seq[rows]
        by_batch: list[DriftBin] = []
        by_position: list[DriftBin] = []
        p_batch = p_position = None
        if batch_code is not None:
            by_batch, p_batch = _homogeneity(correct, batch_code[rows], [str(b) for b in batch_ids], clusters)
        if position is not None:
            by_position, p_position = _homogeneity(correct, position[rows], POSITIONS, clusters)
        flags: list[DriftFlag] = []
        if p_batch is not None and p_batch < alpha:
            flags.append("drift_batch")
        if p_position is not None and p_position < alpha:
            flags.append("drift_position")
        out.append(AnnotatorDrift(annotator=name, by_batch=by_batch, by_position=by_position,
                                  p_batch=p_batch, p_position=p_position, flags=flags))
    return Drift(alpha=alpha, annotators=out)
