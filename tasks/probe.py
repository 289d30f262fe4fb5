"""Linear probes and mutual-information lower bounds on frozen embeddings.

A probe is a logistic regression on standardised embeddings, fitted on frames of the training
sequences and scored on held-out sequences. Its held-out cross-entropy gives the
difference-of-entropies bound (McAllester & Stratos 2020; the probe is any decoder q):

    I(Z; Y) >= H(Y) - CE,   CE = mean over held-out frames of -log q(y | z)   (nats),

with H(Y) the entropy of the held-out label frequencies. The bound is never above H(Y) (CE >= 0)
and is near 0 (slightly below, from the probe's own noise) when Z says nothing about Y.
Intervals come from a bootstrap over held-out *sequences* (items): frames of one sequence are
not independent, so resampling frames would make the intervals too narrow.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from configs.probe import LinearProbeConfig
from storage.results.probe import ProbeInterval, TargetProbe

FLOOR = 1e-4
"""Share of probability mass spread evenly over all classes, so a class the probe never saw in
training costs at most log(n_classes / FLOOR) nats rather than an infinite cross-entropy. The
smoothed q is still a distribution, so the bound stays valid."""


def entropy(y: np.ndarray, n_classes: int) -> float:
    """Plug-in entropy (nats) of integer labels.

    >>> round(entropy(np.array([0, 1, 0, 1]), 2), 4)
    0.6931
    """
    p = np.bincount(y, minlength=n_classes) / max(len(y), 1)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def chance_accuracy(y_train: np.ndarray, y_test: np.ndarray) -> float:
    """Accuracy of always answering the most frequent training label.

    >>> chance_accuracy(np.array([2, 2, 1]), np.array([2, 1, 1, 1]))
    0.25
    """
    return float(np.mean(y_test == np.bincount(y_train).argmax()))


def fit_probe(z: np.ndarray, y: np.ndarray, groups: np.ndarray, config: LinearProbeConfig) -> Pipeline:
    """Standardise, then multinomial logistic regression (L2).

    With several `config.c`, the one with the best log-loss in a cross-validation whose folds
    are whole groups (sequences) is refitted on everything: an unregularised probe on a target
    it cannot predict overfits, and its held-out cross-entropy would then push the MI bound
    below 0. Too few groups for the folds: the middle value of `config.c`.
    """
    folds = min(config.folds, len(np.unique(groups)))
    if len(config.c) == 1 or folds < 2:
        model = LogisticRegression(C=config.c[len(config.c) // 2], l1_ratio=0.0, max_iter=config.max_iter)
    else:
        splits = list(GroupKFold(n_splits=folds).split(z, y, groups))
        model = LogisticRegressionCV(Cs=list(config.c), cv=splits, scoring="neg_log_loss", l1_ratios=(0.0,),
                                     use_legacy_attributes=False, max_iter=config.max_iter)
    probe = make_pipeline(StandardScaler(), model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the held-out CE judges the fit
        warnings.simplefilter("ignore", UserWarning)  # folds that miss a rare class
        probe.fit(z, y)
    return probe


def held_out_nll(probe: Pipeline, z: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """-log q(y | z) per held-out row, with q the probe's probabilities smoothed by `FLOOR`."""
    q = np.zeros((len(z), n_classes))
    q[:, probe.classes_] = probe.predict_proba(z)
    q = (1 - FLOOR) * q + FLOOR / n_classes
    return -np.log(q[np.arange(len(y)), y])


def mi_lower_bound(y: np.ndarray, nll: np.ndarray, n_classes: int) -> float:
    """H(Y) - CE in nats: held-out labels `y` and the probe's `nll` on them.

    >>> y = np.array([0, 1, 0, 1])
    >>> round(mi_lower_bound(y, np.zeros(4), 2), 4), round(mi_lower_bound(y, np.full(4, np.log(2)), 2), 4)
    (0.6931, 0.0)
    """
    return entropy(y, n_classes) - float(np.mean(nll))


def bootstrap_intervals(groups: np.ndarray, y: np.ndarray, nll: np.ndarray, correct: np.ndarray, n_classes: int,
                        n_boot: int, seed: int, level: float = 0.95) -> ProbeInterval:
    """Percentile intervals of accuracy and of the MI bound, resampling whole groups (sequences).

    Each resample draws as many groups as there are, with replacement; H(Y) is recomputed from
    the resampled labels, so the interval covers both terms of the bound.
    """
    if n_boot == 0:
        return ProbeInterval(accuracy=None, mutual_information=None)
    _, g = np.unique(groups, return_inverse=True)
    n_groups = int(g.max()) + 1
    counts = np.zeros((n_groups, n_classes))
    np.add.at(counts, (g, y), 1)
    sizes, nll_sum = counts.sum(axis=1), np.bincount(g, nll, n_groups)
    right = np.bincount(g, correct.astype(float), n_groups)
    w = np.random.default_rng([seed, 5]).multinomial(n_groups, np.full(n_groups, 1 / n_groups), size=n_boot)
    n = np.maximum(w @ sizes, 1)
    p = (w @ counts) / n[:, None]
    h = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0).sum(axis=1)
    mi, acc = h - (w @ nll_sum) / n, (w @ right) / n
    tail = 100 * (1 - level) / 2
    return ProbeInterval(accuracy=np.percentile(acc, [tail, 100 - tail]).tolist(),
                         mutual_information=np.percentile(mi, [tail, 100 - tail]).tolist())


def few_shot_rows(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Rows for a probe trained on `fraction` of the labels: that share of each class, at least one.

    >>> few_shot_rows(np.array([0] * 90 + [1] * 10), 0.1, np.random.default_rng(0)).size
    10
    """
    rows = []
    for c in np.unique(y):
        of_c = np.flatnonzero(y == c)
        rows.append(rng.choice(of_c, size=max(1, int(round(fraction * len(of_c)))), replace=False))
    return np.sort(np.concatenate(rows))


def probe_target(z_train: np.ndarray, y_train: np.ndarray, groups_train: np.ndarray, z_test: np.ndarray,
                 y_test: np.ndarray, groups_test: np.ndarray, n_classes: int, config: LinearProbeConfig,
                 seed: int) -> TargetProbe:
    """Probe one embedding for one target: accuracy, chance, MI bound, intervals, few-shot curve.

    `groups_*` name each row's sequence (item): cross-validation folds and bootstrap resamples
    keep a sequence's frames together.
    """
    probe = fit_probe(z_train, y_train, groups_train, config)
    nll = held_out_nll(probe, z_test, y_test, n_classes)
    correct = probe.predict(z_test) == y_test
    accuracy = float(correct.mean())
    curve: dict[str, float | None] = {}
    for fraction in config.fractions:
        if fraction >= 1:
            curve[str(fraction)] = accuracy
            continue
        scores = []
        for r in range(config.repeats):
            rows = few_shot_rows(y_train, fraction, np.random.default_rng([seed, r, int(fraction * 1e6)]))
            if len(np.unique(y_train[rows])) < 2:
                continue
            few = fit_probe(z_train[rows], y_train[rows], groups_train[rows], config)
            scores.append(float(np.mean(few.predict(z_test) == y_test)))
        curve[str(fraction)] = float(np.mean(scores)) if scores else None
    return TargetProbe(
        accuracy=accuracy, chance=chance_accuracy(y_train, y_test), entropy=entropy(y_test, n_classes),
        cross_entropy=float(nll.mean()), mutual_information=mi_lower_bound(y_test, nll, n_classes),
        n_train=len(y_train), n_test=len(y_test), n_test_groups=len(np.unique(groups_test)),
        interval=bootstrap_intervals(groups_test, y_test, nll, correct, n_classes, config.bootstrap, seed),
        few_shot=curve)
