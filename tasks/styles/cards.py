"""Style cards: what sets an annotator, or a cluster of annotators, apart, in plain words.

A card says only what the numbers single out, each line with its numbers: quality flags with
their evidence; a bout lag that is mostly on one side of zero and away from the others' lag
("starts bouts 6 frames before the others (median; IQR 5-8; ...) and ends them 7 frames later");
a confusion cell well above the others' rate ("labels attack as investigation in 31% of attack
frames (others: 4%)"); missed, extra, split or merged bouts well above the others' rate; an
agreement well away from the others'; drift flags. A subject with none of these gets the one line
`NOTHING_DISTINCTIVE`, never a claim the numbers do not carry.

An annotator card compares the annotator with each other annotator (the median of their rates
and lags); a cluster card pools its members (the median of members' medians and interquartile
bounds, summed confusion and bout counts) and compares them with the non-members pooled the same
way. Lags are in frames, and in seconds too when `Bouts.frame_rate` is set.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

from storage.results.styles import (
    NOTHING_DISTINCTIVE,
    Agreement,
    AnnotatorBouts,
    AnnotatorDrift,
    AnnotatorQuality,
    Bouts,
    ClassBouts,
    Drift,
    DriftBin,
    Quality,
    ReferenceKind,
    Spread,
    StyleCard,
)

# ---------------------------------------------------------------------------------- rules
LAG_LEVEL = 1e-3
"""A lag is claimed only when a sign test rejects "earlier and later equally likely" at this level:
a card tests a few dozen lags (classes x onset/offset), so a strict level keeps chance claims rare.
A sign test rather than "the IQR excludes 0": against a consensus of the others, whose makeup
changes from sequence to sequence, even an annotator that extends every bout has a quarter of its
lags at zero or beyond, and the sign test still sees the one-sidedness the IQR hides."""
MIN_LAGS = 10
"""Fewest measured edges before a lag is described (below this a median is a handful of bouts)."""
MIN_LAG_FRAMES = 1.0
"""A median lag, and its distance from the others' median lag, must be at least one frame: under a
frame there is no edge to move."""
MIN_CLASS_FRAMES = 30
"""Fewest reference frames of a class before its confusions are described (a rate over fewer
frames moves by several points with one bout)."""
MIN_CONFUSION = 0.10
"""A confusion cell is described from a tenth of the class's frames: below that it is what edge
placement and slips give every annotator."""
CONFUSION_FACTOR = 2.0
"""... and only at twice the others' rate for the cell or more: what sets the subject apart, not
what every annotator does."""
MAX_CONFUSION_LINES = 3
"""At most this many confusion lines per card, the largest excess over the others first."""
MIN_BOUTS = 10
"""Fewest bouts (reference bouts for missed and split, the subject's for extra and merged) before a
bout rate is described."""
MIN_BOUT_RATE = 0.20
"""A missed, extra, split or merged rate is described from a fifth of the bouts ..."""
BOUT_RATE_FACTOR = 2.0
"""... at twice the others' rate or more."""
AGREEMENT_GAP = 0.10
"""An overall agreement ten points or more away from the others' is described (the spread of
agreement among annotators of one style on the demo is a few points)."""
MIN_COMPARED = 30
"""Fewest compared frames before a subject's agreement is described."""

REFERENCE_WORDS: dict[ReferenceKind, str] = {
    "others": "the others",
    "model": "the model's consensus",
    "gold": "the gold labels",
}
FLAG_WORDS = {"constant": "constant", "near_random": "near-random", "adversarial": "adversarial"}


# --------------------------------------------------------------------------------- subjects
@dataclass(frozen=True)
class _Side:
    """What a card compares: the subject's annotators, or the others'."""

    confusion: np.ndarray  # (annotators, K, K) their confusion counts ([reference][label])
    pooled: bool  # pool the annotators (a cluster) or take the median over them (the others of one)
    word: str = "others"  # what a card calls this side: "others" or "non-members"


def _confusions(agreement: Agreement) -> np.ndarray:
    """Every annotator's confusion counts as one (annotators, K, K) array (zeros where none), made
    once per set of cards: each card compares one subject with all the others."""
    k = len(agreement.classes)
    out = np.zeros((len(agreement.annotators), k, k), np.float64)
    for i, a in enumerate(agreement.annotators):
        if a.confusion:
            out[i] = np.asarray(a.confusion, np.float64)
    return out


def _rates(side: _Side, num: np.ndarray, den: np.ndarray, least: float) -> np.ndarray:
    """Rates num / den, arrays with the side's annotators first: summed num / summed den when
    pooled (NaN where that den < least), else the median of the annotators' own rates over those
    with den >= least (NaN where none has one): `_combine`, for every cell at once."""
    if side.pooled:
        total = den.sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(total >= least, num.sum(axis=0) / total, np.nan)
    ok = (den >= least) & (den > 0)
    if not ok.any():
        return np.full(np.broadcast_shapes(num.shape[1:], den.shape[1:]), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        each = np.where(ok, num / den, np.nan)
    with warnings.catch_warnings():  # a cell no annotator has: NaN, said as "no rate"
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(each, axis=0)


def _value(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def _combine(pairs: Sequence[tuple[float, float]], pooled: bool, least: float) -> float | None:
    """Summed num / summed den (pooled), or the median of num / den over pairs with den >= least."""
    if pooled:
        num, den = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
        return num / den if den >= least else None
    rates = [n / d for n, d in pairs if d >= least and d > 0]
    return float(np.median(rates)) if rates else None


def _pool(spreads: Sequence[Spread]) -> Spread:
    """Several annotators' spreads as one: median of the medians and of the quartiles, summed counts."""
    have = [s for s in spreads if s.n and s.median is not None and s.q1 is not None and s.q3 is not None]
    if not have:
        return Spread(n=0, median=None, q1=None, q3=None)
    return Spread(
        n=sum(s.n for s in have),
        median=float(np.median([s.median for s in have])),
        q1=float(np.median([s.q1 for s in have])),
        q3=float(np.median([s.q3 for s in have])),
        n_below=sum(s.n_below for s in have),
        n_above=sum(s.n_above for s in have),
    )


def _class_bouts(ab: AnnotatorBouts, name: str | None) -> ClassBouts | None:
    """One annotator's figures for a class (None: the pooled behaviour)."""
    if name is None:
        return ab.behaviour
    return next((c for c in ab.classes if c.name == name), None)


# ------------------------------------------------------------------------------- formatting
def _num(x: float) -> str:
    """A frame count: whole when it is, else one decimal."""
    return str(round(x)) if abs(x - round(x)) < 0.05 else f"{x:.1f}"


def _frames(x: float, frame_rate: float | None) -> str:
    """`x` frames, with seconds when the frame rate is known."""
    text = f"{_num(x)} frame{'' if _num(x) == '1' else 's'}"
    if frame_rate:
        s = x / frame_rate
        text += f" ({s:.0f} s)" if s >= 10 else f" ({s:.1f} s)" if s >= 1 else f" ({s:.2f} s)"
    return text


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _iqr(s: Spread) -> str:
    """The interquartile range, as magnitudes when it lies on one side of zero."""
    assert s.q1 is not None and s.q3 is not None
    if s.q1 > 0 or s.q3 < 0:
        lo, hi = sorted((abs(s.q1), abs(s.q3)))
        return f"{_num(lo)}-{_num(hi)}"
    return f"{_num(s.q1)} to {_num(s.q3)}"


# ------------------------------------------------------------------------------------- lags
def _lag_claim(mine: Spread, others: Spread) -> bool:
    """Whether a lag sets the subject apart (see LAG_LEVEL, MIN_LAGS, MIN_LAG_FRAMES)."""
    if mine.n < MIN_LAGS or mine.median is None or abs(mine.median) < MIN_LAG_FRAMES:
        return False
    side = mine.n_below if mine.median < 0 else mine.n_above
    tested = mine.n_below + mine.n_above
    if not tested or binomtest(side, tested, 0.5, alternative="greater").pvalue >= LAG_LEVEL:
        return False
    if others.median is not None:  # away from the others' lag, on the claimed side
        gap = mine.median - others.median
        if gap * np.sign(mine.median) < MIN_LAG_FRAMES:
            return False
    return True


def _lag_detail(s: Spread, others: Spread, others_word: str | None) -> str:
    """'(median; IQR 5-8; 38 of 40 earlier, 2 later; non-members: 0)': the numbers behind a lag."""
    assert s.median is not None
    extra = f"; {others_word}: {_num(others.median)}" if others_word and others.median is not None else ""
    return f"(median; IQR {_iqr(s)}; {s.n_below} of {s.n} earlier, {s.n_above} later{extra})"


def _lag_line(bouts_word: str, on: tuple[Spread, Spread] | None, off: tuple[Spread, Spread] | None,
              ref: str, frame_rate: float | None, others_word: str | None) -> str | None:
    """'starts <bouts> N frames before <ref> (...) and ends them M frames later (...)'."""
    parts = []
    if on is not None:
        s, o = on
        assert s.median is not None
        when = "before" if s.median < 0 else "after"
        parts.append(f"starts {bouts_word} {_frames(abs(s.median), frame_rate)} {when} {ref} "
                     + _lag_detail(s, o, others_word))
    if off is not None:
        s, o = off
        assert s.median is not None
        detail = _lag_detail(s, o, others_word)
        if parts:
            when = "earlier" if s.median < 0 else "later"
            parts.append(f"ends them {_frames(abs(s.median), frame_rate)} {when} {detail}")
        else:
            when = "before" if s.median < 0 else "after"
            parts.append(f"ends {bouts_word} {_frames(abs(s.median), frame_rate)} {when} {ref} {detail}")
    return " and ".join(parts) if parts else None


def _lag_lines(mine: list[AnnotatorBouts], others: list[AnnotatorBouts], classes: list[str],
               ref: str, frame_rate: float | None, others_word: str | None) -> list[str]:
    """The pooled lag line, then a line per class whose lag the pooled line does not already say
    (`classes` without the background, whose edges mirror the behaviours')."""

    def spreads(group: list[AnnotatorBouts], name: str | None) -> tuple[Spread, Spread]:
        cbs = [c for c in (_class_bouts(ab, name) for ab in group) if c is not None]
        return _pool([c.onset_lag for c in cbs]), _pool([c.offset_lag for c in cbs])

    lines = []
    p_on, p_off = spreads(mine, None)
    o_on, o_off = spreads(others, None)
    said_on = _lag_claim(p_on, o_on)
    said_off = _lag_claim(p_off, o_off)
    line = _lag_line("bouts", (p_on, o_on) if said_on else None, (p_off, o_off) if said_off else None,
                     ref, frame_rate, others_word)
    if line:
        lines.append(line)
    for name in classes:
        c_on, c_off = spreads(mine, name)
        oc_on, oc_off = spreads(others, name)

        def new(s: Spread, o: Spread, pooled: Spread, said: bool) -> bool:
            # a class line only for what the pooled line does not say (or says the other way)
            if not _lag_claim(s, o):
                return False
            return not said or np.sign(s.median or 0) != np.sign(pooled.median or 0)

        on_new, off_new = new(c_on, oc_on, p_on, said_on), new(c_off, oc_off, p_off, said_off)
        line = _lag_line(f"{name} bouts", (c_on, oc_on) if on_new else None,
                         (c_off, oc_off) if off_new else None, ref, frame_rate, others_word)
        if line:
            lines.append(line)
    return lines


# ------------------------------------------------------------------------------- confusions
def _confusion_lines(mine: _Side, others: _Side, classes: list[str], unit: str) -> list[str]:
    """'labels attack as investigation in 31% of attack frames (others: 4%)', largest excess first."""
    found: list[tuple[float, str]] = []
    n = len(classes)
    # (K, K): each cell's share of its reference class's frames, for the subject and the others
    rates = _rates(mine, mine.confusion, mine.confusion.sum(axis=2, keepdims=True), MIN_CLASS_FRAMES)
    bases = _rates(others, others.confusion, others.confusion.sum(axis=2, keepdims=True), MIN_CLASS_FRAMES)
    for r in range(n):
        for c in range(n):
            if r == c:
                continue
            rate, base = _value(rates[r, c]), _value(bases[r, c])
            if rate is None or rate < MIN_CONFUSION or (base is not None and rate < CONFUSION_FACTOR * base):
                continue
            theirs = f" ({others.word}: {_pct(base)})" if base is not None else ""
            found.append((rate - (base or 0.0),
                          f"labels {classes[r]} as {classes[c]} in {_pct(rate)} of {classes[r]} {unit}{theirs}"))
    found.sort(key=lambda t: -t[0])
    return [text for _, text in found[:MAX_CONFUSION_LINES]]


def _agreement_line(mine: _Side, others: _Side, ref: str, unit: str) -> list[str]:
    """The overall agreement, when it is well away from the others'."""

    def rate(side: _Side) -> float | None:
        hits = np.trace(side.confusion, axis1=1, axis2=2)
        return _value(float(_rates(side, hits, side.confusion.sum(axis=(1, 2)), MIN_COMPARED)))

    mine_rate, base = rate(mine), rate(others)
    if mine_rate is None or base is None or abs(mine_rate - base) < AGREEMENT_GAP:
        return []
    n = int(mine.confusion.sum())
    return [f"agrees with {ref} on {_pct(mine_rate)} of {n:,} {unit} ({others.word}: {_pct(base)})"]


# ------------------------------------------------------------------------------- bout rates
BOUT_RATES: tuple[tuple[str, str, str], ...] = (
    # (ClassBouts count, its denominator, sentence)
    ("missed", "n_reference", "misses {rate} of {cls} bouts ({k} of {n}{others})"),
    ("extra", "n_annotator", "adds {cls} bouts not in {ref}: {rate} of its {cls} bouts ({k} of {n}{others})"),
    ("split", "n_reference", "splits {rate} of {cls} bouts in two or more ({k} of {n}{others})"),
    ("merged", "n_annotator", "joins two or more {cls} bouts in one in {rate} of its {cls} bouts ({k} of {n}{others})"),
)


def _bout_pairs(group: list[AnnotatorBouts], name: str, count: str, denom: str) -> list[tuple[float, float]]:
    """(count, denominator) of class `name` for each annotator of the group."""
    cbs = [c for c in (_class_bouts(ab, name) for ab in group) if c is not None]
    return [(float(getattr(c, count)), float(getattr(c, denom))) for c in cbs]


def _bout_lines(mine: list[AnnotatorBouts], others: list[AnnotatorBouts], pooled: bool,
                classes: list[str], ref: str, word: str) -> list[str]:
    """Missed, extra, split and merged bout rates well above the others'."""
    lines = []
    for name in classes:
        for count, denom, text in BOUT_RATES:
            have = _bout_pairs(mine, name, count, denom)
            rate = _combine(have, True, MIN_BOUTS)
            base = _combine(_bout_pairs(others, name, count, denom), pooled, MIN_BOUTS)
            if rate is None or rate < MIN_BOUT_RATE or (base is not None and rate < BOUT_RATE_FACTOR * base):
                continue
            k, n = int(sum(p[0] for p in have)), int(sum(p[1] for p in have))
            theirs = f"; {word}: {_pct(base)}" if base is not None else ""
            lines.append(text.format(rate=_pct(rate), cls=name, k=k, n=n, ref=ref, others=theirs))
    return lines


# ------------------------------------------------------------------------------ quality, drift
def _quality_lines(q: AnnotatorQuality) -> list[str]:
    """Each flag with its evidence sentence."""
    lines = []
    for i, flag in enumerate(q.flags):
        word = FLAG_WORDS.get(flag, flag)
        evidence = q.evidence[i] if i < len(q.evidence) else ""
        if evidence.lower().startswith(word):
            lines.append(evidence)
        else:
            lines.append(f"{word}: {evidence}" if evidence else word)
    return lines


def _bins(bins: list[DriftBin]) -> str:
    have = [b for b in bins if b.agreement is not None]
    if len(have) > 4:  # many batches: the lowest and the highest
        lo = min(have, key=lambda b: b.agreement or 0.0)
        hi = max(have, key=lambda b: b.agreement or 0.0)
        return f"lowest {_pct(lo.agreement or 0.0)} in {lo.name}, highest {_pct(hi.agreement or 0.0)} in {hi.name}"
    return ", ".join(f"{b.name} {_pct(b.agreement or 0.0)}" for b in have)


def _p(p: float | None) -> str:
    return "p unknown" if p is None else f"p = {p:.2g}"


def _drift_lines(d: AnnotatorDrift, ref: str) -> list[str]:
    lines = []
    if "drift_batch" in d.flags:
        lines.append(f"its agreement with {ref} changes across batches ({_p(d.p_batch)}): {_bins(d.by_batch)}")
    if "drift_position" in d.flags:
        lines.append(f"its agreement with {ref} changes along the sequences ({_p(d.p_position)}): "
                     f"{_bins(d.by_position)}")
    return lines


DRIFT_WORDS = {"drift_batch": "agreement changes across batches", "drift_position": "agreement changes along the sequences"}


def _members_flagged(members: list[str], flags: dict[str, list[str]], words: dict[str, str]) -> list[str]:
    """'near-random: ann3, ann5 (2 of 3 members)' for each flag some members carry."""
    lines = []
    for flag, who in flags.items():
        if who:
            lines.append(f"{words.get(flag, flag)}: {', '.join(who)} ({len(who)} of {len(members)} members)")
    return lines


# ------------------------------------------------------------------------------------ cards
def _card_lines(members: list[str], agreement: Agreement, confusions: np.ndarray, bouts: Bouts | None,
                cluster: bool) -> list[str]:
    """The numbers' lines (lags, confusions, bout rates, agreement) of a subject against the rest;
    `confusions` is `_confusions(agreement)`."""
    inside = set(members)
    ref = REFERENCE_WORDS[agreement.reference]
    member = np.array([a.annotator in inside for a in agreement.annotators], bool)
    mine = _Side(confusions[member], True)
    rest = _Side(confusions[~member], cluster, "non-members" if cluster else "others")
    lines: list[str] = []
    if bouts is not None:
        b_mine = [b for b in bouts.annotators if b.annotator in inside]
        b_rest = [b for b in bouts.annotators if b.annotator not in inside]
        b_ref = REFERENCE_WORDS[bouts.reference]
        word = "non-members" if cluster else ("other annotators" if bouts.reference != "others" else None)
        behaviours = [c for c in agreement.classes if c != bouts.background]
        lines += _lag_lines(b_mine, b_rest, behaviours, b_ref, bouts.frame_rate, word)
    unit = "items" if bouts is None else "frames"  # no bouts: one-item crowd data
    lines += _confusion_lines(mine, rest, agreement.classes, unit)
    if bouts is not None:
        lines += _bout_lines(b_mine, b_rest, cluster, agreement.classes, REFERENCE_WORDS[bouts.reference],
                             rest.word)
    lines += _agreement_line(mine, rest, ref, unit)
    return lines


def annotator_cards(agreement: Agreement, quality: Quality | None, bouts: Bouts | None,
                    drift: Drift | None) -> list[StyleCard]:
    """One card per annotator (in `agreement`'s order): what sets it apart from the others."""
    ref = REFERENCE_WORDS[agreement.reference]
    qual = {q.annotator: q for q in quality.annotators} if quality else {}
    drifts = {d.annotator: d for d in drift.annotators} if drift else {}
    confusions = _confusions(agreement)
    cards = []
    for a in agreement.annotators:
        name = a.annotator
        lines = _quality_lines(qual[name]) if name in qual else []
        lines += _card_lines([name], agreement, confusions, bouts, cluster=False)
        lines += _drift_lines(drifts[name], ref) if name in drifts else []
        cards.append(StyleCard(kind="annotator", name=name, members=[name], lines=lines or [NOTHING_DISTINCTIVE]))
    return cards


def cluster_cards(agreement: Agreement, quality: Quality | None, bouts: Bouts | None, drift: Drift | None,
                  clusters: dict[str, int], k: int) -> list[StyleCard]:
    """One card per cluster of `clusters` (annotator -> cluster id, cut at `k`): its members pooled
    against the non-members."""
    known = [a.annotator for a in agreement.annotators]
    confusions = _confusions(agreement)
    cards = []
    for cid in sorted(set(clusters.values())):
        members = [a for a in known if clusters.get(a) == cid]
        if not members:
            continue
        lines: list[str] = []
        if quality is not None:
            flagged = {f: [q.annotator for q in quality.annotators if q.annotator in members and f in q.flags]
                       for f in FLAG_WORDS}
            lines += _members_flagged(members, flagged, FLAG_WORDS)
        lines += _card_lines(members, agreement, confusions, bouts, cluster=True)
        if drift is not None:
            flagged = {f: [d.annotator for d in drift.annotators if d.annotator in members and f in d.flags]
                       for f in DRIFT_WORDS}
            lines += _members_flagged(members, flagged, DRIFT_WORDS)
        cards.append(StyleCard(kind="cluster", name=f"cluster {cid} (k={k})", members=members,
                               lines=lines or [NOTHING_DISTINCTIVE]))
    return cards
