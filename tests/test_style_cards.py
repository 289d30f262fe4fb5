"""Style cards (tasks.styles.cards): the demo's styles in words, and no claims the numbers lack."""

from __future__ import annotations

import re

import numpy as np
import pytest

from configs.sources import DemoSource
from storage.results.styles import (
    Agreement,
    AnnotatorAgreement,
    AnnotatorBouts,
    AnnotatorDrift,
    AnnotatorQuality,
    Bouts,
    ClassBouts,
    Drift,
    DriftBin,
    Interval,
    Quality,
    Spread,
    StyleCard,
)
from tasks.demo import generate_batch
from tasks.styles.bouts import bouts
from tasks.styles.cards import NOTHING_DISTINCTIVE, annotator_cards, cluster_cards
from tasks.styles.consensus import Reference, fixed, leave_one_out

GROUPS = ("lenient", "strict", "confuser")
NUMBER = r"[\d.]+ frames?(?: \([\d.]+ s\))?"


def _agreement(ref: Reference, annotators: list[str], classes: list[str]) -> Agreement:
    """A plain confusion per annotator against its reference (what tasks.styles.agreement fills)."""
    n = len(classes)
    rows = []
    for i, name in enumerate(annotators):
        m = np.zeros((n, n), np.int64)
        np.add.at(m, (ref.reference[i], ref.labels[i]), 1)
        acc = float(np.trace(m) / max(m.sum(), 1))
        rows.append(_annotator_agreement(name, m.tolist(), acc))
    return Agreement(reference=ref.kind, classes=classes, krippendorff_alpha=None, n_items=0, annotators=rows)


def _annotator_agreement(name: str, confusion: list[list[int]], acc: float) -> AnnotatorAgreement:
    total = int(np.sum(confusion))
    return AnnotatorAgreement(
        annotator=name, n_labels=total, n_compared=total, agreement=acc, agreement_ci=Interval(low=acc, high=acc),
        chance=0.25, kappa=None, kappa_ci=Interval(low=None, high=None), confusion=confusion, classes=[],
    )


@pytest.fixture(scope="module")
def demo() -> dict:
    batch = generate_batch(DemoSource(kind="demo"))
    assert batch.gold is not None
    offsets = np.concatenate([[0], np.cumsum(batch.sequence_lengths)])
    n = len(batch.classes)
    groups = {name: s["group"] for name, s in batch.meta["truth"]["styles"].items()}
    out: dict = {"groups": groups, "styles": batch.meta["truth"]["styles"]}
    for kind, ref in (("gold", fixed(batch.labels, batch.gold, n, "gold")),
                      ("others", leave_one_out(batch.labels, n))):
        agreement = _agreement(ref, batch.annotators, batch.classes)
        b = bouts(ref, offsets, batch.classes, batch.annotators, "other", 30.0)
        clusters = {name: GROUPS.index(g) for name, g in groups.items()}
        out[kind] = {
            "annotators": {c.name: c for c in annotator_cards(agreement, None, b, None)},
            "clusters": cluster_cards(agreement, None, b, None, clusters, 3),
        }
    return out


def _says_lag(card: StyleCard, ref: str, start: str, end: str) -> bool:
    """Whether the card's first lag line says the bouts start `start` and end `end` (`ref` = whom)."""
    pattern = rf"^starts bouts {NUMBER} {start} {ref} \(.*\) and ends them {NUMBER} {end} \("
    return any(re.match(pattern, line) for line in card.lines)


@pytest.mark.parametrize("kind,ref", [("others", "the others"), ("gold", "the gold labels")])
def test_demo_cards_say_the_styles(demo: dict, kind: str, ref: str) -> None:
    cards = demo[kind]["annotators"]
    for name, group in demo["groups"].items():
        card = cards[name]
        if group == "lenient":
            assert _says_lag(card, ref, "before", "later"), card.lines
        elif group == "strict":
            assert _says_lag(card, ref, "after", "earlier"), card.lines
        else:
            assert any(line.startswith("labels attack as investigation in ") for line in card.lines), card.lines
    for cluster in demo[kind]["clusters"]:
        group = {demo["groups"][m] for m in cluster.members}
        assert len(group) == 1
        if group == {"lenient"}:
            assert _says_lag(cluster, ref, "before", "later"), cluster.lines
        elif group == {"strict"}:
            assert _says_lag(cluster, ref, "after", "earlier"), cluster.lines
        else:
            assert re.search(r"^labels attack as investigation in \d+% of attack frames \(non-members: \d+%\)",
                             cluster.lines[0]), cluster.lines


def test_demo_cards_give_the_drawn_shifts_against_gold(demo: dict) -> None:
    said = 0
    for name, style in demo["styles"].items():
        for line in demo["gold"]["annotators"][name].lines:
            m = re.match(rf"starts bouts ({NUMBER}) (before|after) .* and ends them ({NUMBER}) (earlier|later)", line)
            if not m:
                continue
            said += 1
            (on, on_s), (off, _) = (re.findall(r"[\d.]+", m[1]), re.findall(r"[\d.]+", m[3]))
            on_lag = float(on) * (-1 if m[2] == "before" else 1)
            off_lag = float(off) * (-1 if m[4] == "earlier" else 1)
            # confusers draw shifts of -1 to 1 frames: a claim for them must be as small
            assert abs(on_lag + style["onset_shift"]) <= 2 and abs(off_lag - style["offset_shift"]) <= 2, (line, style)
            assert float(on_s) == pytest.approx(float(on) / 30.0, abs=0.01)  # seconds at 30 frames/s
    assert said >= 6  # at least every lenient and strict annotator


# ------------------------------------------------------------------------- constructed input
CLASSES = ["other", "a", "b"]


def _spread(median: float, below: int, above: int) -> Spread:
    n = below + above
    return Spread(n=n, median=median, q1=median - 3, q3=median + 3, n_below=below, n_above=above)


def _class(name: str, on: Spread, off: Spread, missed: int = 2, extra: int = 2) -> ClassBouts:
    return ClassBouts(name=name, n_reference=40, n_annotator=40, n_matched=36, onset_lag=on, offset_lag=off,
                      duration_ratio=_spread(1.0, 10, 10), missed=missed, extra=extra, split=1, merged=1)


def _plain_bouts(names: list[str], special: dict[str, ClassBouts] | None = None) -> Bouts:
    """Every annotator with lags balanced around zero (`special`: an annotator's pooled behaviour)."""
    even = _class("behaviour", _spread(0.0, 20, 20), _spread(0.0, 20, 20))
    rows = [
        AnnotatorBouts(annotator=n, n_sequences=4,
                       classes=[_class(c, _spread(0.0, 15, 15), _spread(0.0, 15, 15)) for c in CLASSES],
                       behaviour=(special or {}).get(n, even))
        for n in names
    ]
    return Bouts(reference="others", background="other", frame_rate=None, annotators=rows)


PLAIN = [[500, 20, 10], [10, 200, 10], [10, 10, 200]]


def _plain_agreement(names: list[str], special: dict[str, list[list[int]]] | None = None) -> Agreement:
    rows = [_annotator_agreement(n, (special or {}).get(n, PLAIN), 0.9) for n in names]
    return Agreement(reference="others", classes=CLASSES, krippendorff_alpha=0.8, n_items=1000, annotators=rows)


def _quality(names: list[str], flagged: dict[str, tuple[str, str]] | None = None) -> Quality:
    rows = []
    for n in names:
        flag, evidence = (flagged or {}).get(n, (None, None))
        rows.append(AnnotatorQuality(annotator=n, n_labels=1000, dawid_skene=0.9, agreement_score=0.9, top_label="other",
                                     top_share=0.5, flags=[flag] if flag else [], evidence=[evidence] if evidence else []))
    return Quality(annotators=rows, flagged={})


def _drift(names: list[str], flagged: str | None = None) -> Drift:
    bins = [DriftBin(name=p, n=300, agreement=0.9) for p in ("start", "middle", "end")]
    rows = [AnnotatorDrift(annotator=n, by_batch=[], by_position=bins, p_batch=None, p_position=0.5, flags=[])
            for n in names]
    if flagged:
        low = [DriftBin(name=p, n=300, agreement=a) for p, a in (("start", 0.9), ("middle", 0.8), ("end", 0.6))]
        rows[names.index(flagged)] = AnnotatorDrift(annotator=flagged, by_batch=[], by_position=low, p_batch=None,
                                                    p_position=1e-6, flags=["drift_position"])
    return Drift(alpha=0.002, annotators=rows)


NAMES = ["p", "q", "r", "s", "t"]


def test_nothing_distinctive_gives_no_claims() -> None:
    # near misses of every rule: a 2-frame median lag with as many earlier as later edges; a
    # confusion cell at 8% (under a tenth of the class's frames); one at 14% where the others give 10%
    near = {"q": _class("behaviour", _spread(-2.0, 22, 18), _spread(2.0, 18, 22))}
    conf = {"r": [[500, 20, 10], [10, 184, 16], [10, 10, 200]],  # a as b: 8%
            "s": [[500, 20, 10], [10, 187, 33], [10, 10, 200]]}  # a as b: 14%
    base = {n: [[500, 20, 10], [10, 198, 22], [10, 10, 200]] for n in ("p", "q", "t")}  # a as b: 10%
    agreement = _plain_agreement(NAMES, {**base, **conf})
    cards = annotator_cards(agreement, _quality(NAMES), _plain_bouts(NAMES, near), _drift(NAMES))
    assert [c.name for c in cards] == NAMES
    assert all(c.lines == [NOTHING_DISTINCTIVE] for c in cards), [c.lines for c in cards]
    clusters = cluster_cards(agreement, _quality(NAMES), _plain_bouts(NAMES, near), _drift(NAMES),
                             {"p": 0, "q": 0, "r": 1, "s": 1, "t": 1}, 2)
    assert [c.members for c in clusters] == [["p", "q"], ["r", "s", "t"]]
    assert [c.name for c in clusters] == ["cluster 0 (k=2)", "cluster 1 (k=2)"]
    assert all(c.lines == [NOTHING_DISTINCTIVE] for c in clusters), [c.lines for c in clusters]


def test_flags_confusions_and_bout_rates_are_said_with_their_numbers() -> None:
    late = {"q": _class("behaviour", _spread(4.0, 2, 38), _spread(0.0, 20, 20))}
    b = _plain_bouts(NAMES, late)
    b.annotators[2].classes[1] = _class("a", _spread(0.0, 15, 15), _spread(0.0, 15, 15), missed=20)  # r misses a
    agreement = _plain_agreement(NAMES, {"s": [[500, 20, 10], [10, 100, 110], [10, 10, 200]]})
    evidence = "near-random: agrees with the others on 12% of items (chance 10%)"
    quality = _quality(NAMES, {"p": ("near_random", evidence)})
    cards = {c.name: c for c in annotator_cards(agreement, quality, b, _drift(NAMES, "t"))}
    assert cards["p"].lines == [evidence]
    assert len(cards["q"].lines) == 1
    assert re.match(r"starts bouts 4 frames after the others \(median; IQR 1-7; 2 of 40 earlier, 38 later\)$",
                    cards["q"].lines[0]), cards["q"].lines
    assert cards["r"].lines == ["misses 50% of a bouts (20 of 40; others: 5%)"]
    assert cards["s"].lines[0] == "labels a as b in 50% of a frames (others: 5%)"
    assert any(line.startswith("agrees with the others on ") for line in cards["s"].lines)
    assert cards["t"].lines == ["its agreement with the others changes along the sequences (p = 1e-06): "
                                "start 90%, middle 80%, end 60%"]
    clusters = cluster_cards(agreement, quality, b, _drift(NAMES, "t"), {"p": 0, "q": 0, "r": 1, "s": 1, "t": 1}, 2)
    assert clusters[0].lines[0] == "near-random: p (1 of 2 members)"
    assert "agreement changes along the sequences: t (1 of 3 members)" in clusters[1].lines
    assert any(line.startswith("labels a as b in ") and "(non-members: 5%)" in line for line in clusters[1].lines)


def test_cards_of_a_large_crowd_are_not_quadratic_in_python() -> None:
    """400 annotators, 8 classes: every card compares its annotator with the 399 others over 56
    confusion cells. Cell by cell in Python that took 13 s here; one array per set of cards, 1 s.
    The one annotator that labels class 1 as 2 half the time is the only one said to."""
    import time

    rng = np.random.default_rng(0)
    k, m = 8, 400
    names = [f"w{i}" for i in range(m)]
    rows = []
    for i, name in enumerate(names):
        cm = np.diag(rng.integers(80, 120, k)) + rng.integers(0, 4, (k, k))
        if i == 7:
            cm[1, 2] = cm[1, 1]
        rows.append(_annotator_agreement(name, cm.tolist(), float(np.trace(cm) / cm.sum())))
    agreement = Agreement(reference="others", classes=[f"c{c}" for c in range(k)], krippendorff_alpha=None,
                          n_items=0, annotators=rows)
    t = time.perf_counter()
    cards = annotator_cards(agreement, None, None, None)
    seconds = time.perf_counter() - t
    said = [c.name for c in cards if any(line.startswith("labels c1 as c2 in ") for line in c.lines)]
    assert said == ["w7"]
    assert seconds < 8, seconds
