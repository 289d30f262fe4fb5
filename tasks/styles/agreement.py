"""Each annotator against its reference: confusion, per-class precision, recall and kappa, overall
kappa with intervals; Krippendorff's alpha over all annotators.

Everything per annotator comes from its K x K confusion matrix ([reference class][annotator's
label], one `np.bincount`), so a crowd of hundreds of annotators or 100k frames takes milliseconds:
- kappa = (p_o - p_e) / (1 - p_e), p_e = sum_c (reference share of c)(annotator share of c): what
  `sklearn.metrics.cohen_kappa_score(ref, own, labels=range(K))` gives (NaN where p_e = 1);
- its standard error is the large-sample one of Fleiss, Cohen & Everitt (1969), valid away from
  kappa = 0 too (`kappa_se`), and the interval is kappa +- 1.96 se;
- the agreement interval is Wilson's (`scipy.stats.binomtest(...).proportion_ci`), right for small
  counts and agreements near 0 or 1;
- per class, "this class or not": precision, recall and the 2 x 2 kappa.
Krippendorff's alpha (nominal) is the `krippendorff` package's, on the items that at least two
annotators labelled (an item with one label carries no agreement information).
"""

from __future__ import annotations

import krippendorff
import numpy as np
from scipy import stats

from storage.results.styles import Agreement, AnnotatorAgreement, ClassAgreement, Interval
from tasks.styles.consensus import Reference, vote_counts

Z95 = float(stats.norm.ppf(0.975))


def confusion(reference: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(K, K) counts: [reference class][annotator's label]."""
    flat = np.asarray(reference, np.int64) * n_classes + np.asarray(labels, np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _ratio(num: float, den: float) -> float:
    return num / den if den else float("nan")


def kappa_from_confusion(cm: np.ndarray) -> tuple[float, float, float, float]:
    """(kappa, its standard error, observed agreement, chance agreement) of one confusion matrix.

    The standard error is Fleiss, Cohen & Everitt's (1969) large-sample formula; NaN where kappa
    is undefined (no items, or both sides always give the same one class)."""
    n = float(cm.sum())
    if not n:
        return (float("nan"),) * 4
    p = cm / n
    rows, cols = p.sum(axis=1), p.sum(axis=0)  # reference's, annotator's class shares
    po, pe = float(np.trace(p)), float(rows @ cols)
    if pe >= 1.0:
        return float("nan"), float("nan"), po, pe
    k = (po - pe) / (1.0 - pe)
    diag = np.diag(p)
    a = float(diag @ (1.0 - (rows + cols) * (1.0 - k)) ** 2)
    off = p.copy()
    np.fill_diagonal(off, 0.0)
    b = (1.0 - k) ** 2 * float((off * (cols[:, None] + rows[None, :]) ** 2).sum())
    c = (k - pe * (1.0 - k)) ** 2
    var = max(a + b - c, 0.0) / (n * (1.0 - pe) ** 2)
    return k, float(np.sqrt(var)), po, pe


def wilson(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """Wilson interval of a proportion, 95% unless told (None bounds when n = 0)."""
    if n <= 0:
        return Interval(low=None, high=None)
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(low=float(ci.low), high=float(ci.high))


def class_agreement(cm: np.ndarray, names: list[str]) -> list[ClassAgreement]:
    """One-vs-rest precision, recall and kappa of every class from a confusion matrix."""
    n = int(cm.sum())
    out = []
    for c, name in enumerate(names):
        tp = int(cm[c, c])
        n_ref, n_ann = int(cm[c].sum()), int(cm[:, c].sum())
        two = np.array([[n - n_ref - n_ann + tp, n_ann - tp], [n_ref - tp, tp]])
        out.append(ClassAgreement(name=name, n_reference=n_ref, n_annotator=n_ann,
                                  precision=_ratio(tp, n_ann), recall=_ratio(tp, n_ref),
                                  kappa=kappa_from_confusion(two)[0]))
    return out


def annotator_agreement(name: str, n_labels: int, own: np.ndarray, ref: np.ndarray,
                        classes: list[str]) -> AnnotatorAgreement:
    """One annotator's labels `own` against its reference `ref` on the same compared frames."""
    cm = confusion(ref, own, len(classes))
    k, se, po, pe = kappa_from_confusion(cm)
    n = int(cm.sum())
    return AnnotatorAgreement(
        annotator=name, n_labels=n_labels, n_compared=n,
        agreement=po, agreement_ci=wilson(int(np.trace(cm)), n), chance=pe,
        kappa=k, kappa_se=se, kappa_ci=Interval(low=k - Z95 * se, high=k + Z95 * se),
        confusion=cm.tolist(), classes=class_agreement(cm, classes),
    )


def krippendorff_alpha(labels: np.ndarray, n_classes: int) -> tuple[float, int]:
    """Nominal Krippendorff's alpha over every annotator, and the items it is computed on (those
    with at least two labels)."""
    counts = vote_counts(np.asarray(labels), n_classes)
    keep = counts.sum(axis=1) >= 2
    if not keep.any() or n_classes < 2:
        return float("nan"), int(keep.sum())
    try:
        with np.errstate(divide="ignore", invalid="ignore"):  # every label the same: NaN, said as None
            value = krippendorff.alpha(value_counts=counts[keep], level_of_measurement="nominal")
    except ValueError:  # one value in the whole domain: alpha is undefined
        return float("nan"), int(keep.sum())
    return float(value), int(keep.sum())


def agreement(labels: np.ndarray, ref: Reference, classes: list[str], annotators: list[str]) -> Agreement:
    """Every annotator against its reference (`ref.labels[a]` vs `ref.reference[a]`), and
    Krippendorff's alpha of all annotators together. `labels` is (frames, annotators), -1 = none."""
    labels = np.asarray(labels)
    n_labels = (labels >= 0).sum(axis=0)
    per = [annotator_agreement(name, int(n_labels[a]), ref.labels[a], ref.reference[a], classes)
           for a, name in enumerate(annotators)]
    alpha, n_items = krippendorff_alpha(labels, len(classes))
    return Agreement(reference=ref.kind, classes=list(classes), krippendorff_alpha=alpha,
                     n_items=n_items, annotators=per)
