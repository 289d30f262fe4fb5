"""The reference each annotator is compared with: the consensus of the others, the model's, or gold.

`leave_one_out` gives, for every annotator, the frames it labelled on which at least
`min_others` other annotators did, and the majority label of those others there (the
annotator's own vote removed, so it is never compared with itself). Ties go to the class the
whole crowd uses most, so the result is deterministic and does not favour low class codes.
`fixed` does the same with one track for everyone (the model's consensus, or gold).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from storage.results.styles import ReferenceKind


@dataclass(frozen=True)
class Reference:
    """Per annotator (in store order): the frames compared and the reference label on each.

    `rows[a]` are sorted frame indices where annotator a labelled and the reference has a
    label; `labels[a]` the annotator's labels there and `reference[a]` the reference's.
    """

    kind: ReferenceKind
    n_classes: int
    rows: list[np.ndarray]
    labels: list[np.ndarray]
    reference: list[np.ndarray]

    def track(self, a: int, n_frames: int) -> np.ndarray:
        """Annotator a's reference as a full track, -1 where there is none."""
        out = np.full(n_frames, -1, np.int64)
        out[self.rows[a]] = self.reference[a]
        return out


def vote_counts(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(frames, classes) how many annotators gave each class; `labels` is (frames, annotators), -1 = none."""
    labels = np.asarray(labels)
    given = labels >= 0
    flat = np.nonzero(given)[0] * n_classes + labels[given].astype(np.int64)  # one pass, not one per class
    counts = np.bincount(flat, minlength=labels.shape[0] * n_classes)
    return counts.reshape(labels.shape[0], n_classes).astype(np.int32)


def others_votes(counts: np.ndarray, rows: np.ndarray, own: np.ndarray) -> np.ndarray:
    """(len(rows), classes) the other annotators' votes on `rows`: `vote_counts` there less the
    annotator's own label `own` on each (so it never votes for itself)."""
    others = counts[rows].copy()
    others[np.arange(len(rows)), own] -= 1
    return others


def class_prior(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Share of all labels in each class (uniform when there are none)."""
    flat = labels[labels >= 0].astype(np.int64)
    counts = np.bincount(flat, minlength=n_classes)[:n_classes].astype(np.float64)
    return counts / counts.sum() if counts.sum() else np.full(n_classes, 1.0 / max(n_classes, 1))


def leave_one_out(labels: np.ndarray, n_classes: int, min_others: int = 1) -> Reference:
    """Each annotator against the majority of the others on the frames it labelled."""
    labels = np.asarray(labels)
    counts = vote_counts(labels, n_classes)
    # exact tie-break: votes * K + rank, the rank larger for the crowd's more used class, then
    # for the lower code (a small float added to the votes is swamped once K or the crowd is large)
    crowd = counts.sum(axis=0, dtype=np.int64)
    rank = np.empty(n_classes, np.int64)
    rank[np.lexsort((-np.arange(n_classes), crowd))] = np.arange(n_classes)
    rows, own, ref = [], [], []
    for a in range(labels.shape[1]):
        r = np.flatnonzero(labels[:, a] >= 0)
        mine = labels[r, a].astype(np.int64)
        others = others_votes(counts, r, mine)
        keep = others.sum(axis=1) >= min_others
        r, mine, others = r[keep], mine[keep], others[keep]
        rows.append(r)
        own.append(mine)
        ref.append(np.argmax(others.astype(np.int64) * n_classes + rank, axis=1))
    return Reference("others", n_classes, rows, own, ref)


def fixed(labels: np.ndarray, track: np.ndarray, n_classes: int, kind: ReferenceKind) -> Reference:
    """Every annotator against one track (the model's consensus or gold; -1 = no label)."""
    labels = np.asarray(labels)
    track = np.asarray(track).astype(np.int64)
    rows, own, ref = [], [], []
    for a in range(labels.shape[1]):
        r = np.flatnonzero((labels[:, a] >= 0) & (track >= 0))
        rows.append(r)
        own.append(labels[r, a].astype(np.int64))
        ref.append(track[r])
    return Reference(kind, n_classes, rows, own, ref)
