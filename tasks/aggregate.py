"""Label aggregation with crowd-kit: majority vote and Dawid-Skene on a store's label matrix.

The baselines train a classifier on these labels, and label-only datasets (no features) report
them against gold instead of a model. crowd-kit wants the long table (task, worker, label);
`long_table` builds it from the dense (frames, annotators) matrix with -1 = not labelled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd

from storage.results.train import AggregatorMetrics

log = logging.getLogger(__name__)

METHODS = ("mv", "ds")


def long_table(labels: np.ndarray) -> pd.DataFrame:
    """The (task, worker, label) rows of a label matrix; task = frame, worker = column.

    >>> long_table(np.array([[0, -1], [1, 1]], np.int16)).values.tolist()
    [[0, 0, 0], [1, 0, 1], [1, 1, 1]]
    """
    task, worker = np.nonzero(labels >= 0)
    return pd.DataFrame({"task": task, "worker": worker, "label": labels[task, worker].astype(np.int64)})


class CrowdAggregate:
    """Aggregate a label matrix with crowd-kit's MajorityVote ("mv") or DawidSkene ("ds").

    Fitted attributes: `labels_` (n_frames,) int16, -1 where a frame has no label; `probas_`
    (n_frames, n_classes) float32, zero rows where a frame has no label; `model_`, the fitted
    crowd-kit model (None when there were no labels; tasks indexed by frame, workers by column);
    `seconds_`.

    >>> agg = CrowdAggregate("mv", n_classes=2).fit(np.array([[0, 0, 1], [-1, 1, 1]], np.int16))
    >>> agg.labels_.tolist()
    [0, 1]
    """

    def __init__(self, method: str, n_classes: int, n_iter: int = 100, tol: float = 1e-5) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown aggregation {method!r}; known: {METHODS}")
        self.method, self.n_classes, self.n_iter, self.tol = method, n_classes, n_iter, tol

    def fit(self, labels: np.ndarray) -> CrowdAggregate:
        from crowdkit.aggregation import DawidSkene, MajorityVote

        t0 = time.perf_counter()
        n = labels.shape[0]
        self.labels_ = np.full(n, -1, np.int16)
        self.probas_ = np.zeros((n, self.n_classes), np.float32)
        table = long_table(labels)
        self.model_: MajorityVote | DawidSkene | None = None
        if len(table):
            model = MajorityVote() if self.method == "mv" else DawidSkene(n_iter=self.n_iter, tol=self.tol)
            model.fit(table)
            self.model_ = model
            hard, probas = model.labels_, model.probas_
            if hard is None or probas is None:
                raise RuntimeError(f"crowd-kit's {self.method} set no labels after fitting")
            self.labels_[hard.index.to_numpy()] = hard.to_numpy().astype(np.int16)
            cols = probas.columns.to_numpy().astype(np.int64)
            self.probas_[np.ix_(probas.index.to_numpy(), cols)] = probas.to_numpy(np.float32)
        self.seconds_ = time.perf_counter() - t0
        log.info("%s aggregation of %d labels on %d frames in %.1f s", self.method.upper(), len(table), n,
                 self.seconds_)
        return self


def accuracy(pred: np.ndarray, truth: np.ndarray) -> float | None:
    """Share of frames where truth >= 0 and pred == truth; None when no truth."""
    known = truth >= 0
    return float((pred[known] == truth[known]).mean()) if known.any() else None


def aggregator_report(labels: np.ndarray, gold: np.ndarray, n_classes: int, annotators: list[str],
                      methods: Sequence[str] = METHODS) -> dict[str, AggregatorMetrics]:
    """Each aggregator's consensus against gold, on the frames that have gold and a crowd label.

    Also each annotator's agreement with the aggregate, which is what a label-only dataset can say
    about annotators without a model.
    """
    out: dict[str, AggregatorMetrics] = {}
    labelled = (labels >= 0).any(axis=1)
    target = np.where(labelled, gold, -1)
    for method in methods:
        agg = CrowdAggregate(method, n_classes).fit(labels)
        agree: dict[str, float | None] = {}
        for r, name in enumerate(annotators):
            agree[name] = accuracy(agg.labels_, np.where(labels[:, r] >= 0, labels[:, r], -1))
        out[method] = AggregatorMetrics(consensus_accuracy=accuracy(agg.labels_, target),
                                        n_gold=int((target >= 0).sum()), agreement_per_annotator=agree,
                                        seconds=agg.seconds_)
    return out
