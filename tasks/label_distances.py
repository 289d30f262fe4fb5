"""Annotator distances from labels alone, for data without a model (or before one is trained).

For each pair of annotators a, b, over the n_ab frames both labelled:
- overlap n_ab;
- disagreement 1 - (frames with the same label) / n_ab;
- Cohen's kappa (p_o - p_e) / (1 - p_e), with p_o the agreement rate and
  p_e = sum_c (n_a,c / n_ab)(n_b,c / n_ab), n_a,c the shared frames a labelled c: exactly
  `sklearn.metrics.cohen_kappa_score` on those frames (NaN where p_e = 1 or n_ab = 0).

Everything comes from one-hot matrix products accumulated over chunks of frames (overlap = M'M,
same-label counts = sum_c Y_c'Y_c, n_a,c for each partner = Y_c'M, with M the labelled mask and
Y_c the mask of label c), so rte (164 annotators x 800 items) and dreem (5 x 85,911) take
milliseconds and memory stays bounded.

Missing pairs: a pair with fewer than `min_overlap` shared frames (or an undefined kappa) has
no usable distance. Clustering needs a complete matrix, so such a pair gets the largest
observed distance ("max", the default: unknown counts as unlike, so no cluster is built on
missing evidence) or their mean ("mean"); the pairs are listed with their overlap counts and
flagged as imputed, never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from storage.dataset_store import DatasetStore
from storage.results.analyze import Overlap

Kind = Literal["disagreement", "kappa"]
MAX_CHUNK_CELLS = 1 << 24  # frames x annotators per chunk (64 MiB of float32 per mask)


@dataclass
class PairCounts:
    """Counts over frames that pairs of annotators both labelled.

    overlap[a, b]: frames both labelled; same[a, b]: of those, frames with the same label;
    by_class[c, a, b]: of those, frames that a labelled c; n_labels[a]: frames a labelled.
    """

    overlap: np.ndarray
    same: np.ndarray
    by_class: np.ndarray
    n_labels: np.ndarray

    def __add__(self, other: PairCounts) -> PairCounts:
        return PairCounts(self.overlap + other.overlap, self.same + other.same,
                          self.by_class + other.by_class, self.n_labels + other.n_labels)

    @classmethod
    def zeros(cls, n_annotators: int, n_classes: int) -> PairCounts:
        a, c = n_annotators, n_classes
        return cls(np.zeros((a, a), np.int64), np.zeros((a, a), np.int64),
                   np.zeros((c, a, a), np.int64), np.zeros(a, np.int64))


def pair_counts(labels: np.ndarray, n_classes: int) -> PairCounts:
    """Pair counts of a (frames, annotators) label matrix, -1 = not labelled."""
    n, n_ann = labels.shape
    total = PairCounts.zeros(n_ann, n_classes)
    step = max(1024, MAX_CHUNK_CELLS // max(n_ann, 1))
    for start in range(0, n, step):
        total = total + _chunk_counts(labels[start: start + step], n_classes)
    return total


def _chunk_counts(labels: np.ndarray, n_classes: int) -> PairCounts:
    # float32 products of 0/1 matrices are exact while a chunk has < 2**24 frames
    mask = (labels >= 0).astype(np.float32)
    mask_t = np.ascontiguousarray(mask.T)
    overlap = mask_t @ mask
    same = np.zeros_like(overlap)
    by_class = np.empty((n_classes, *overlap.shape), np.float32)
    for c in range(n_classes):
        y_t = np.ascontiguousarray((labels == c).T, dtype=np.float32)
        same += y_t @ y_t.T
        by_class[c] = y_t @ mask
    return PairCounts(_as_int(overlap), _as_int(same), _as_int(by_class), mask.sum(axis=0).astype(np.int64))


def _as_int(x: np.ndarray) -> np.ndarray:
    return np.rint(x).astype(np.int64)


def store_pair_counts(store: DatasetStore, chunk_frames: int = 1 << 16) -> PairCounts:
    """Pair counts of a dataset store, read chunk by chunk."""
    total = PairCounts.zeros(store.n_annotators, store.n_classes)
    for start in range(0, store.n_frames, chunk_frames):
        total = total + pair_counts(store.read_labels(start, start + chunk_frames), store.n_classes)
    return total


def agreement_matrices(counts: PairCounts) -> tuple[np.ndarray, np.ndarray]:
    """(disagreement rate, Cohen's kappa) per pair; NaN where undefined (no shared frame, p_e = 1)."""
    n = counts.overlap.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = counts.same / n
        expected = np.einsum("cab,cba->ab", counts.by_class.astype(np.float64),
                             counts.by_class.astype(np.float64)) / (n * n)
        kappa = (observed - expected) / (1.0 - expected)
    kappa[np.isclose(expected, 1.0)] = np.nan
    return 1.0 - observed, kappa


@dataclass
class LabelDistances:
    """A complete distance matrix for clustering, with what it rests on."""

    matrix: np.ndarray
    kind: str
    disagreement: np.ndarray
    kappa: np.ndarray
    overlap: np.ndarray
    missing: np.ndarray  # (A, A) bool: imputed pairs
    imputed_value: float | None
    min_overlap: int

    def missing_pairs(self, annotators: list[str]) -> list[tuple[str, str, int]]:
        """(a, b, overlap) for every imputed pair (a before b)."""
        rows, cols = np.nonzero(np.triu(self.missing, 1))
        return [(annotators[i], annotators[j], int(self.overlap[i, j])) for i, j in zip(rows, cols, strict=True)]

    def report(self, annotators: list[str]) -> Overlap:
        """The overlap report: counts, the imputed pairs, annotators with no usable partner."""
        n = len(annotators)
        pairs = n * (n - 1) // 2
        missing = self.missing_pairs(annotators)
        usable = ~self.missing & ~np.eye(n, dtype=bool)
        off = self.overlap[~np.eye(n, dtype=bool)]
        return Overlap(
            kind=self.kind,
            min_overlap=self.min_overlap,
            n_pairs=pairs,
            n_low_overlap_pairs=len(missing),
            imputed_fraction=len(missing) / pairs if pairs else 0.0,
            imputed_value=self.imputed_value,
            overlap_median=float(np.median(off)) if off.size else None,
            isolated_annotators=[annotators[i] for i in np.flatnonzero(~usable.any(axis=1))],
            low_overlap_pairs=missing,
        )


def label_distances(counts: PairCounts, kind: Kind = "disagreement", min_overlap: int = 10,
                    impute: Literal["max", "mean"] = "max") -> LabelDistances:
    """The distance matrix (1 - agreement or 1 - kappa) with missing pairs imputed."""
    disagreement, kappa = agreement_matrices(counts)
    raw = disagreement if kind == "disagreement" else 1.0 - kappa
    n = raw.shape[0]
    off_diagonal = ~np.eye(n, dtype=bool)
    missing = off_diagonal & ((counts.overlap < min_overlap) | ~np.isfinite(raw))
    missing |= missing.T
    observed = raw[off_diagonal & ~missing]
    value = None
    matrix = np.where(missing, 0.0, raw)
    if missing.any():
        value = float(observed.max() if impute == "max" else observed.mean()) if observed.size else 1.0
        matrix[missing] = value
    matrix = np.clip(matrix, 0.0, None)
    np.fill_diagonal(matrix, 0.0)
    return LabelDistances(0.5 * (matrix + matrix.T), kind, disagreement, kappa, counts.overlap,
                          missing, value, min_overlap)
