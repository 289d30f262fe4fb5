"""Bout timing (tasks.styles.bouts): the demo's drawn shifts come back, and the matching's edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from configs.sources import DemoSource
from storage.results.styles import AnnotatorBouts, Bouts, ClassBouts
from tasks.demo import generate_batch
from tasks.styles.bouts import bouts
from tasks.styles.consensus import fixed, leave_one_out

CLASSES = ["bg", "a", "b"]


@pytest.fixture(scope="module")
def demo() -> dict:
    batch = generate_batch(DemoSource(kind="demo"))
    offsets = np.concatenate([[0], np.cumsum(batch.sequence_lengths)])
    n = len(batch.classes)
    assert batch.gold is not None
    out = {}
    for kind, ref in (("gold", fixed(batch.labels, batch.gold, n, "gold")),
                      ("others", leave_one_out(batch.labels, n))):
        result = bouts(ref, offsets, batch.classes, batch.annotators, "other", None)
        assert result is not None
        out[kind] = {a.annotator: a for a in result.annotators}
    return {"bouts": out, "styles": batch.meta["truth"]["styles"]}


def _behaviour(a: AnnotatorBouts) -> ClassBouts:
    assert a.behaviour is not None and a.behaviour.name == "behaviour"
    return a.behaviour


def test_demo_lags_against_gold_are_the_drawn_shifts(demo: dict) -> None:
    checked = 0
    for name, style in demo["styles"].items():
        if style["group"] not in ("lenient", "strict"):
            continue
        b = _behaviour(demo["bouts"]["gold"][name])
        assert b.onset_lag.n >= 30 and b.offset_lag.n >= 30, name
        assert b.onset_lag.median is not None and b.offset_lag.median is not None
        assert abs(b.onset_lag.median - (-style["onset_shift"])) <= 2, (name, style, b.onset_lag)
        assert abs(b.offset_lag.median - style["offset_shift"]) <= 2, (name, style, b.offset_lag)
        checked += 1
    assert checked == 6  # 8 annotators in 3 groups: 3 lenient, 3 strict


def test_demo_lag_signs_against_the_others(demo: dict) -> None:
    for name, style in demo["styles"].items():
        b = _behaviour(demo["bouts"]["others"][name])
        on, off = b.onset_lag.median, b.offset_lag.median
        assert on is not None and off is not None
        if style["group"] == "lenient":
            assert on < 0 < off, (name, b)
        elif style["group"] == "strict":
            assert off < 0 < on, (name, b)


@pytest.mark.parametrize("kind", ["gold", "others"])
def test_demo_confusers_miss_attack_bouts(demo: dict, kind: str) -> None:
    def missed(name: str) -> float:
        attack = next(c for c in demo["bouts"][kind][name].classes if c.name == "attack")
        assert attack.n_reference >= 20
        return attack.missed / attack.n_reference

    groups = {n: s["group"] for n, s in demo["styles"].items()}
    confusers = [missed(n) for n, g in groups.items() if g == "confuser"]
    rest = [missed(n) for n, g in groups.items() if g != "confuser"]
    assert confusers and min(confusers) > max(rest), (confusers, rest)


# ------------------------------------------------------------------------ hand-made tracks
def _one(ann: list[int], ref: list[int], background: str | None = "bg",
         offsets: list[int] | None = None) -> dict[str, ClassBouts]:
    """One annotator's ClassBouts by class name, against a fixed reference track."""
    labels = np.array(ann, dtype=np.int16)[:, None]
    reference = fixed(labels, np.array(ref), len(CLASSES), "gold")
    result = bouts(reference, np.array(offsets or [0, len(ann)]), CLASSES, ["x"], background, None)
    assert result is not None
    (a,) = result.annotators
    assert a.behaviour is not None
    return {c.name: c for c in a.classes} | {"pooled": a.behaviour}


def test_split_bout() -> None:
    #        0  1  2  3  4  5  6  7  8  9
    ref = [0, 0, 1, 1, 1, 1, 1, 1, 0, 0]
    ann = [0, 0, 1, 1, 1, 0, 1, 1, 0, 0]
    c = _one(ann, ref)
    a = c["a"]
    assert (a.n_reference, a.n_annotator, a.n_matched) == (1, 2, 1)
    assert (a.split, a.merged, a.missed, a.extra) == (1, 0, 0, 0)
    # matched to the larger piece [2, 5): same onset, ends 3 frames early
    assert (a.onset_lag.median, a.offset_lag.median) == (0.0, -3.0)
    assert a.duration_ratio.median == pytest.approx(0.5)
    assert c["bg"].extra == 1  # the annotator's one-frame gap overlaps no background bout


def test_merged_bout() -> None:
    ref = [0, 0, 1, 1, 0, 1, 1, 1, 0, 0]
    ann = [0, 0, 1, 1, 1, 1, 1, 1, 0, 0]
    a = _one(ann, ref)["a"]
    assert (a.n_reference, a.n_annotator, a.n_matched) == (2, 1, 1)
    assert (a.merged, a.split, a.missed, a.extra) == (1, 0, 0, 0)
    # matched to the larger reference bout [5, 8): starts 3 frames before it, ends with it
    assert (a.onset_lag.median, a.offset_lag.median) == (-3.0, 0.0)


def test_missed_and_extra_bouts() -> None:
    ref = [0, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    ann = [0, 0, 0, 0, 0, 0, 2, 2, 0, 0]
    c = _one(ann, ref)
    assert (c["a"].n_reference, c["a"].missed, c["a"].n_matched, c["a"].onset_lag.n) == (1, 1, 0, 0)
    assert (c["b"].n_annotator, c["b"].extra, c["b"].missed) == (1, 1, 0)
    assert c["pooled"].missed == 1 and c["pooled"].extra == 1


def test_matching_is_greedy_largest_overlap_first() -> None:
    # reference bouts of a: R1 [2, 7), R2 [8, 14); the annotator's: A1 [3, 11), A2 [12, 16).
    # A1 takes R1 (overlap 4 > 3), so R2 goes to A2 (overlap 2): two matches, not one.
    ref = [0, 0, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    ann = [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 0]
    a = _one(ann, ref)["a"]
    assert (a.n_matched, a.merged, a.split, a.missed, a.extra) == (2, 1, 1, 0, 0)
    assert (a.onset_lag.n, a.onset_lag.median) == (2, 2.5)  # A1 - R1 = 1, A2 - R2 = 4


def test_gap_and_sequence_end_cut_bouts() -> None:
    # the annotator skips frames 4-5: two segments, the reference's bout [1, 8) cut in both
    ref = [0, 1, 1, 1, 1, 1, 1, 1, 0, 0]
    ann = [0, 1, 1, 1, -1, -1, 1, 1, 1, 0]
    a = _one(ann, ref)["a"]
    assert (a.n_reference, a.n_matched, a.missed, a.split) == (2, 2, 0, 0)
    assert (a.onset_lag.n, a.onset_lag.median) == (1, 0.0)  # the first piece's onset only
    assert (a.offset_lag.n, a.offset_lag.median) == (1, 1.0)  # the second piece's offset only
    assert a.duration_ratio.n == 0  # both pieces are cut
    # a sequence end cuts too: the same frames as two sequences of 5
    ann2 = [0, 1, 1, 1, 1, 1, 1, 1, 1, 0]
    b = _one(ann2, ref, offsets=[0, 5, 10])["a"]
    assert (b.n_reference, b.n_matched, b.onset_lag.n, b.offset_lag.n) == (2, 2, 1, 1)
    assert (b.onset_lag.median, b.offset_lag.median) == (0.0, 1.0)


def test_background_limits_the_edges_measured() -> None:
    ref = [0, 0, 1, 1, 1, 2, 2, 2, 0, 0]
    ann = [0, 1, 1, 1, 1, 1, 2, 2, 2, 0]
    c = _one(ann, ref)
    assert (c["a"].onset_lag.n, c["a"].onset_lag.median, c["a"].offset_lag.n) == (1, -1.0, 0)
    assert (c["b"].onset_lag.n, c["b"].offset_lag.n, c["b"].offset_lag.median) == (0, 1, 1.0)
    assert c["pooled"].name == "behaviour" and (c["pooled"].onset_lag.n, c["pooled"].offset_lag.n) == (1, 1)
    d = _one(ann, ref, background=None)  # every edge counts, and the pool is every class
    assert (d["a"].offset_lag.n, d["a"].offset_lag.median) == (1, 1.0)
    assert (d["b"].onset_lag.n, d["b"].onset_lag.median) == (1, 1.0)
    assert d["pooled"].name == "all classes" and d["pooled"].n_reference == 4


def test_crowd_items_have_no_bouts() -> None:
    labels = np.array([[0, 1], [1, 1], [2, 2]], dtype=np.int16)
    ref = leave_one_out(labels, 3)
    assert bouts(ref, np.array([0, 1, 2, 3]), CLASSES, ["x", "y"], None, None) is None
    many = bouts(ref, np.array([0, 3]), CLASSES, ["x", "y"], None, 25.0)
    assert isinstance(many, Bouts) and many.frame_rate == 25.0 and many.reference == "others"


def test_matching_a_long_chain_of_overlaps_is_linear() -> None:
    """Bouts of 3 frames with 1-frame gaps, the annotator's shifted 2 frames earlier: each of its
    bouts overlaps two of the reference's by one frame, a chain over the whole sequence. Greedy
    matching (ties: the earlier pair) gives each reference bout the annotator bout that ends in
    it; iterated mutual-best passes found one pair per pass here, quadratic in bouts (30 s)."""
    import time

    n = 25_000  # reference bouts: 100,000 frames
    ref = np.tile([1, 1, 1, 0], n)
    ann = np.roll(ref, 2)  # 1 0 1 1 1 0 1 1 1 ...: a first one-frame bout, then n bouts
    t = time.perf_counter()
    a = _one(ann.tolist(), ref.tolist())["a"]
    seconds = time.perf_counter() - t
    assert (a.n_reference, a.n_annotator, a.n_matched) == (n, n + 1, n)
    assert (a.merged, a.split, a.missed, a.extra) == (n - 1, n, 0, 0)
    assert (a.onset_lag.n, a.onset_lag.median) == (n - 1, -2.0)  # the first pair's onset is cut
    assert seconds < 5, seconds
