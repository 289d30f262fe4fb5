"""What the style explanations say (`tasks.styles`): each annotator against a reference, in numbers
and in words.

The reference of an annotator is, by default, the consensus of the *other* annotators on the
items it labelled (leave-one-out, so nobody is compared with itself); `reference` names it:
"others", "model" (the trained model's consensus, which saw every annotator) or "gold".
Frame counts are frames (items for crowd data); lags are in frames, negative = earlier than the
reference, and `frame_rate` (the config's, else the one the reader found, e.g. BORIS's FPS)
turns them into seconds.
"""

from __future__ import annotations

from typing import Literal

from storage.results import Number, ResultModel

ReferenceKind = Literal["others", "model", "gold"]
QualityFlag = Literal["constant", "near_random", "adversarial"]
DriftFlag = Literal["drift_batch", "drift_position"]


class Interval(ResultModel):
    """A 95% confidence interval."""

    low: Number
    high: Number


# ------------------------------------------------------------------------------ agreement
class ClassAgreement(ResultModel):
    """One class, one annotator against its reference (one class against the rest)."""

    name: str
    n_reference: int  # compared frames the reference gives this class
    n_annotator: int  # compared frames the annotator gives this class
    precision: Number
    recall: Number
    kappa: Number  # Cohen's kappa of "this class or not"


class AnnotatorAgreement(ResultModel):
    """One annotator against its reference on the frames both labelled."""

    annotator: str
    n_labels: int  # frames the annotator labelled
    n_compared: int  # of those, frames that have a reference label
    agreement: Number  # share of compared frames where the annotator gives the reference's label
    agreement_ci: Interval  # Wilson interval of `agreement`
    chance: Number  # agreement expected by chance from the two label distributions
    kappa: Number  # Cohen's kappa (scikit-learn's)
    kappa_ci: Interval  # 95% interval of kappa (asymptotic standard error)
    kappa_se: Number = None  # that standard error (Fleiss, Cohen & Everitt 1969), for tests at other levels
    confusion: list[list[int]]  # [reference class][annotator's label] frame counts
    classes: list[ClassAgreement]


class Agreement(ResultModel):
    """Every annotator against its reference, and the agreement of all annotators together."""

    reference: ReferenceKind
    classes: list[str]
    krippendorff_alpha: Number  # nominal, over every annotator (the `krippendorff` package)
    n_items: int  # items with at least two labels (what alpha is computed on)
    annotators: list[AnnotatorAgreement]


# -------------------------------------------------------------------------------- quality
class AnnotatorQuality(ResultModel):
    """How good one annotator's labels are, and the flags the evidence supports."""

    annotator: str
    n_labels: int
    dawid_skene: Number  # crowd-kit's Dawid-Skene skill (its estimated accuracy)
    agreement_score: Number  # CROWDLAB-style: agreement with the others' consensus, shrunk to the crowd's
    top_label: str  # the answer it gives most
    top_share: Number  # the share of its labels that answer takes
    flags: list[QualityFlag]
    evidence: list[str]  # one sentence per flag, with the numbers behind it
    n_compared: int = 0  # labels compared with the reference (flags need cfg.min_labels of them)
    kappa_upper: Number = None  # one-sided upper confidence bound of kappa at the corrected level


class Quality(ResultModel):
    """Every annotator's quality scores and flags (`tasks.styles.quality`)."""

    annotators: list[AnnotatorQuality]
    flagged: dict[str, list[str]]  # flag -> annotators carrying it
    level: Number = None  # the per-annotator test level: cfg.level / annotators tested (Bonferroni)


# ---------------------------------------------------------------------------------- bouts
class Spread(ResultModel):
    """Median and interquartile range of a sample (None when it is empty)."""

    n: int
    median: Number
    q1: Number
    q3: Number
    n_below: int = 0  # values below the centre (0 for lags, 1 for duration ratios): earlier, shorter
    n_above: int = 0  # values above it: later, longer (what a sign test of "no lag" counts)


class ClassBouts(ResultModel):
    """One class's bouts (maximal runs) of one annotator matched to the reference's bouts."""

    name: str
    n_reference: int  # reference bouts
    n_annotator: int  # the annotator's bouts
    n_matched: int
    onset_lag: Spread  # annotator's start - reference's start, frames (< 0: starts earlier)
    offset_lag: Spread  # annotator's end - reference's end, frames (> 0: ends later)
    duration_ratio: Spread  # annotator's bout length / the reference's
    missed: int  # reference bouts the annotator has no overlapping bout of this class for
    extra: int  # the annotator's bouts that overlap no reference bout of this class
    split: int  # reference bouts overlapped by two or more of the annotator's bouts
    merged: int  # the annotator's bouts that overlap two or more reference bouts


class AnnotatorBouts(ResultModel):
    """One annotator's bouts matched to its reference's, per class and pooled."""

    annotator: str
    n_sequences: int  # sequences compared
    classes: list[ClassBouts]
    # every class but the background pooled ("behaviour"; with no background every class, "all
    # classes"): what a card says first, e.g. "starts bouts 6 frames before the others"
    behaviour: ClassBouts | None = None


class Bouts(ResultModel):
    """Bout timing of every annotator; only for frame sequences (not one-item crowd data)."""

    reference: ReferenceKind
    background: str | None  # lags are measured where a bout borders this class (None: every edge)
    frame_rate: Number  # frames per second (the config's, else the reader's), for lags in seconds
    annotators: list[AnnotatorBouts]


# ---------------------------------------------------------------------------------- drift
class DriftBin(ResultModel):
    """The agreement with the reference in one batch, or one third of the sequences."""

    name: str  # a batch id, or start / middle / end of the sequences
    n: int  # compared frames in the bin
    agreement: Number


class AnnotatorDrift(ResultModel):
    """One annotator's agreement per batch and per position, and whether it moves beyond chance."""

    annotator: str
    by_batch: list[DriftBin]
    by_position: list[DriftBin]
    p_batch: Number  # chi-squared test that agreement is the same in every batch
    p_position: Number  # the same along the position in the sequence
    flags: list[DriftFlag]


class Drift(ResultModel):
    """Every annotator's drift (`tasks.styles.drift`)."""

    alpha: float  # the test level, after a Bonferroni correction over annotators
    annotators: list[AnnotatorDrift]


# ---------------------------------------------------------------------------------- cards
NOTHING_DISTINCTIVE = "nothing in these numbers sets it apart from the others"
"""The one line of a card whose numbers single nothing out (`tasks.styles.cards`)."""


class StyleCard(ResultModel):
    """What sets an annotator or a cluster apart, in plain words (from the numbers above)."""

    kind: Literal["annotator", "cluster"]
    name: str  # the annotator, or "cluster <id> (k=<k>)"
    members: list[str]
    lines: list[str]


class StylesReport(ResultModel):
    """The style explanations of one dataset (also `styles.json` in its analysis folder)."""

    reference: ReferenceKind
    k: int | None = None  # the cut the cluster cards describe (the best silhouette among analyze.ks)
    clusters: dict[str, int] = {}  # annotator -> cluster at that cut
    agreement: Agreement
    quality: Quality | None = None
    bouts: Bouts | None = None
    drift: Drift | None = None
    cards: list[StyleCard] = []
    seconds: dict[str, float] = {}

    def annotator_table(self) -> dict[str, list[str | int | float]]:
        """One row per annotator: cluster, agreement, kappa, quality, flags and the pooled bout lags
        (`styles_annotators.csv`, and a table in MLflow); NaN where a number is undefined."""
        quality = {q.annotator: q for q in self.quality.annotators} if self.quality else {}
        timing = {b.annotator: b.behaviour for b in self.bouts.annotators} if self.bouts else {}
        columns: dict[str, list[str | int | float]] = {name: [] for name in (
            "annotator", "cluster", "n_labels", "n_compared", "agreement", "kappa", "kappa_low", "kappa_high",
            "dawid_skene", "agreement_score", "flags", "onset_lag_median", "offset_lag_median")}
        for a in self.agreement.annotators:
            q = quality.get(a.annotator)
            b = timing.get(a.annotator)
            values: list[str | int | float | None] = [
                a.annotator, self.clusters.get(a.annotator, ""), a.n_labels, a.n_compared, a.agreement, a.kappa,
                a.kappa_ci.low, a.kappa_ci.high, q.dawid_skene if q else None, q.agreement_score if q else None,
                " ".join(q.flags) if q else "", b.onset_lag.median if b else None,
                b.offset_lag.median if b else None]
            for name, value in zip(columns, values, strict=True):
                columns[name].append(float("nan") if value is None else value)
        return columns


def card_lines(cards: list[StyleCard], limit: int = 12) -> list[str]:
    """The cards as text lines: every cluster card, then up to `limit` annotator cards that say
    something (flagged annotators first), and how many more the report holds (a card that finds
    nothing distinctive, `NOTHING_DISTINCTIVE`, is left out here)."""
    clusters = [c for c in cards if c.kind == "cluster"]
    people = [c for c in cards if c.kind == "annotator" and c.lines != [NOTHING_DISTINCTIVE]]
    people.sort(key=lambda c: not any(word in line for line in c.lines
                                      for word in ("constant", "near-random", "adversarial")))
    lines: list[str] = []
    for card in [*clusters, *people[:limit]]:
        who = f"{card.name} ({len(card.members)}: {', '.join(card.members[:6])}{' ...' if len(card.members) > 6 else ''})" \
            if card.kind == "cluster" else card.name
        lines.append(f"{who}:")
        lines += [f"  - {line}" for line in card.lines] or ["  - nothing sets it apart"]
    quiet = sum(c.kind == "annotator" for c in cards) - len(people)
    if len(people) > limit or quiet:
        more = f"{len(people) - limit} more annotator cards" if len(people) > limit else "annotator cards"
        lines.append(f"({more} in styles.json; {quiet} annotator(s) with nothing that sets them apart)")
    return lines
