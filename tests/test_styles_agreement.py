"""Agreement of each annotator with its reference (`tasks.styles.agreement`): kappa equals
scikit-learn's and alpha the `krippendorff` package's on the shared crowds, against a leave-one-out
consensus written plainly here; the intervals are the ones they say they are."""

from __future__ import annotations

import krippendorff
import numpy as np
import pytest
from conftest import CONFIGS, SHARED
from sklearn.metrics import cohen_kappa_score, precision_score, recall_score

from configs.schema import load_config
from tasks.readers import read_source
from tasks.styles.agreement import agreement, kappa_from_confusion
from tasks.styles.consensus import leave_one_out

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/datasets")
SETS = ["rte", "temp", "wsd", "bluebirds", "labelme", "dreem"]
STAGES = ["Wake", "N1", "N2", "N3", "REM"]


def load(name: str):
    return read_source(load_config(CONFIGS / f"{name}.yaml"))


def naive_leave_one_out(labels: np.ndarray, k: int, a: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows annotator a labelled where another did, its labels, and the others' majority there
    (ties: the class the whole crowd uses most, then the lower code)."""
    crowd = np.array([(labels == c).sum() for c in range(k)])
    others = np.delete(labels, a, axis=1)
    votes = np.stack([(others == c).sum(axis=1) for c in range(k)], axis=1)
    rows = np.flatnonzero((labels[:, a] >= 0) & (votes.sum(axis=1) >= 1))
    majority = []
    for r in rows:
        best = max(range(k), key=lambda c: (votes[r, c], crowd[c], -c))
        majority.append(best)
    return rows, labels[rows, a].astype(np.int64), np.array(majority, np.int64)


@pytest.mark.parametrize("name", SETS)
def test_kappa_and_alpha_equal_the_libraries(name):
    batch = load(name)
    labels = batch.labels if name != "dreem" else batch.labels[:20000]  # a quarter: the plain loop is slow
    k = len(batch.classes)
    result = agreement(labels, leave_one_out(labels, k), batch.classes, batch.annotators)
    checked = 0
    for a, row in enumerate(result.annotators):
        rows, own, ref = naive_leave_one_out(labels, k, a)
        assert row.n_compared == len(rows)
        assert row.n_labels == int((labels[:, a] >= 0).sum())
        if len(rows) < 2 or len(np.unique(np.concatenate([own, ref]))) < 2:
            continue
        expected = cohen_kappa_score(ref, own, labels=list(range(k)))
        assert row.kappa == pytest.approx(expected, abs=1e-12), batch.annotators[a]
        assert row.agreement == pytest.approx(np.mean(own == ref))
        assert np.asarray(row.confusion).sum() == len(rows)
        checked += 1
    assert checked >= min(5, len(batch.annotators))
    # alpha: the package's reliability-data path, on the items at least two annotators labelled
    keep = (labels >= 0).sum(axis=1) >= 2
    data = np.where(labels >= 0, labels, np.nan).T[:, keep]
    expected_alpha = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal",
                                        value_domain=list(range(k)))
    assert result.krippendorff_alpha == pytest.approx(expected_alpha, abs=1e-10)
    assert result.n_items == int(keep.sum())


def test_per_class_numbers_equal_scikit_learn():
    batch = load("wsd")
    k = len(batch.classes)
    ref = leave_one_out(batch.labels, k)
    result = agreement(batch.labels, ref, batch.classes, batch.annotators)
    a = int(np.argmax([r.n_compared for r in result.annotators]))
    own, theirs = ref.labels[a], ref.reference[a]
    for c, cls in enumerate(result.annotators[a].classes):
        assert cls.n_reference == int((theirs == c).sum()) and cls.n_annotator == int((own == c).sum())
        if cls.n_annotator:
            assert cls.precision == pytest.approx(precision_score(theirs == c, own == c))
        if cls.n_reference:
            assert cls.recall == pytest.approx(recall_score(theirs == c, own == c))
        if 0 < cls.n_reference < len(own) or 0 < cls.n_annotator < len(own):
            assert cls.kappa == pytest.approx(cohen_kappa_score(theirs == c, own == c))


def test_wilson_interval_is_wilsons():
    batch = load("rte")
    result = agreement(batch.labels, leave_one_out(batch.labels, 2), batch.classes, batch.annotators)
    z = 1.959963984540054
    for row in result.annotators[:20]:
        n, p = row.n_compared, row.agreement
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        assert row.agreement_ci.low == pytest.approx(centre - half, abs=1e-9)
        assert row.agreement_ci.high == pytest.approx(centre + half, abs=1e-9)


def test_kappa_interval_covers_the_truth_about_95_percent():
    """The asymptotic interval of kappa covers the kappa of the generating process in about 95% of
    simulated samples (a standard error off by a factor of 1.5 gives about 80% or 99.5%)."""
    rng = np.random.default_rng(7)
    k, n, sims = 3, 300, 2000
    truth = np.array([[0.30, 0.04, 0.02], [0.05, 0.20, 0.05], [0.03, 0.06, 0.25]])
    rows, cols = truth.sum(axis=1), truth.sum(axis=0)
    true_kappa = (np.trace(truth) - rows @ cols) / (1 - rows @ cols)
    covered = 0
    for _ in range(sims):
        cm = rng.multinomial(n, truth.ravel()).reshape(k, k)
        kappa, se, _, _ = kappa_from_confusion(cm)
        covered += abs(kappa - true_kappa) <= 1.959964 * se
    assert 0.93 <= covered / sims <= 0.97


def test_dreem_per_stage_kappa_row_equals_scikit_learn():
    """Scorer 1 of the Dreem nights against the other four: per-stage (one stage or not) kappa."""
    batch = load("dreem")
    labels, k = batch.labels, 5
    result = agreement(labels, leave_one_out(labels, k), STAGES, batch.annotators)
    a = 0
    rows, own, ref = naive_leave_one_out_vectorised(labels, k, a)
    row = result.annotators[a]
    assert [c.name for c in row.classes] == STAGES
    for c, cls in enumerate(row.classes):
        assert cls.kappa == pytest.approx(cohen_kappa_score(ref == c, own == c), abs=1e-12)
    assert row.kappa == pytest.approx(cohen_kappa_score(ref, own, labels=list(range(k))), abs=1e-12)


def naive_leave_one_out_vectorised(labels: np.ndarray, k: int, a: int):
    """The same consensus as `naive_leave_one_out`, by sorting keys instead of a Python loop."""
    crowd = np.array([(labels == c).sum() for c in range(k)])
    others = np.delete(labels, a, axis=1)
    votes = np.stack([(others == c).sum(axis=1) for c in range(k)], axis=1)
    rows = np.flatnonzero((labels[:, a] >= 0) & (votes.sum(axis=1) >= 1))
    order = np.lexsort((-np.arange(k), crowd))  # ascending crowd count, then higher code first
    rank = np.empty(k, np.int64)
    rank[order] = np.arange(k)  # a larger rank wins a tie
    key = votes[rows] * k + rank[None, :]
    return rows, labels[rows, a].astype(np.int64), np.argmax(key, axis=1)
