"""Bout timing: each annotator's bouts (maximal runs of one class) matched to its reference's.

Per annotator, the frames compared are those where both it and its reference have a label
(`Reference.rows`); they fall into segments, contiguous runs of frames within one sequence
(a gap or a sequence end cuts a segment). A bout is a maximal run of one class within a
segment, for the annotator and for the reference alike. Per class, the annotator's bouts are
matched one-to-one to the reference's by overlap, the largest overlap first; a matched pair
gives a signed onset lag (annotator's start - reference's start), offset lag (annotator's end -
reference's end, ends exclusive) and duration ratio. A reference bout that no bout of the
annotator's of its class overlaps is missed, an annotator's bout that overlaps none of the
reference's is extra; a reference bout overlapped by two or more of the annotator's is split,
an annotator's bout overlapping two or more of the reference's is merged.

A bout cut by a segment edge gives no lag at that edge (its true edge is not seen), and no
duration ratio. With a `background` class (the class behaviour bouts start from and return to,
e.g. "other"), the lags of the other classes are measured only at edges where the reference bout
borders the background, so that a lenient annotator's "attack starts 6 frames early" is not
mixed with where it puts the edge between approach and attack; the background's own bouts count
at every edge. With no background every edge counts. Everything is numpy over the bouts of one
annotator at a time, but the greedy matching, one sorted pass over the overlapping pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from errors import InputError
from storage.results.styles import AnnotatorBouts, Bouts, ClassBouts, Spread
from tasks.styles.consensus import Reference

POOLED_BEHAVIOUR = "behaviour"  # name of the pooled ClassBouts: every class but the background
POOLED_ALL = "all classes"  # ... with no background: every class


@dataclass(frozen=True)
class _Runs:
    """The bouts of one track over the compared frames (positions into `Reference.rows[a]`)."""

    start: np.ndarray  # first position of each bout
    end: np.ndarray  # one past its last position
    cls: np.ndarray  # its class
    ident: np.ndarray  # (positions,) the bout each position belongs to
    cut_start: np.ndarray  # bool: the bout starts at a segment start (its onset is not seen)
    cut_end: np.ndarray  # bool: it ends at a segment end


def _runs(track: np.ndarray, seg_break: np.ndarray) -> _Runs:
    """Maximal runs of one class of `track`, cut at every segment start (`seg_break`)."""
    n = len(track)
    brk = seg_break.copy()
    brk[1:] |= track[1:] != track[:-1]
    start = np.flatnonzero(brk)
    end = np.append(start[1:], n) if n else start
    seg_end = np.append(seg_break[1:], True)  # position p is the last of its segment
    return _Runs(
        start=start,
        end=end,
        cls=track[start],
        ident=np.cumsum(brk) - 1,
        cut_start=seg_break[start],
        cut_end=seg_end[end - 1],
    )


def spread(values: np.ndarray, centre: float = 0.0) -> Spread:
    """Median, interquartile range and the counts either side of `centre` (None for an empty sample)."""
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return Spread(n=0, median=None, q1=None, q3=None)
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    return Spread(n=len(values), median=float(med), q1=float(q1), q3=float(q3),
                  n_below=int((values < centre).sum()), n_above=int((values > centre).sum()))


def _match(pa: np.ndarray, pr: np.ndarray, overlap: np.ndarray, n_a: int, n_r: int) -> np.ndarray:
    """One-to-one matching of overlapping pairs, the largest overlap first (ties: the earlier
    pair): the pairs kept (bool). One sort and one pass over the pairs, linear in bouts (passes
    of mutual-best pairs were quadratic along a chain of equal overlaps)."""
    order = np.lexsort((np.arange(len(pa)), -overlap)).tolist()
    kept = np.zeros(len(pa), bool)
    used_a, used_r = [False] * n_a, [False] * n_r
    a_of, r_of = pa.tolist(), pr.tolist()
    for i in order:
        a, r = a_of[i], r_of[i]
        if not (used_a[a] or used_r[r]):
            used_a[a] = used_r[r] = True
            kept[i] = True
    return kept


@dataclass(frozen=True)
class _Matched:
    """One annotator's bout comparison, per bout and per matched pair (classes as codes)."""

    r_cls: np.ndarray  # reference bouts' classes
    a_cls: np.ndarray  # the annotator's bouts' classes
    missed: np.ndarray  # bool per reference bout
    split: np.ndarray  # bool per reference bout
    extra: np.ndarray  # bool per annotator bout
    merged: np.ndarray  # bool per annotator bout
    cls: np.ndarray  # class of each matched pair
    onset: np.ndarray  # onset lag of each matched pair (float; NaN where not measured)
    offset: np.ndarray
    ratio: np.ndarray


def _compare(own: np.ndarray, ref: np.ndarray, seg_break: np.ndarray, background: int | None) -> _Matched:
    """Match one annotator's bouts to its reference's over the compared frames."""
    a, r = _runs(own, seg_break), _runs(ref, seg_break)
    n_a, n_r = len(a.start), len(r.start)
    # overlapping pairs of one class: positions where both give the same label. Both bout ids
    # are non-decreasing along the positions, so the pair keys are too: runs, not a sort.
    same = np.flatnonzero(own == ref)
    key = a.ident[same] * n_r + r.ident[same]
    first = np.flatnonzero(np.diff(key, prepend=-1) != 0)
    overlap = np.diff(np.append(first, len(key)))
    pa, pr = a.ident[same[first]], r.ident[same[first]]
    per_r = np.bincount(pr, minlength=n_r)
    per_a = np.bincount(pa, minlength=n_a)
    kept = _match(pa, pr, overlap, n_a, n_r)
    ma, mr = pa[kept], pr[kept]
    onset = (a.start[ma] - r.start[mr]).astype(np.float64)
    offset = (a.end[ma] - r.end[mr]).astype(np.float64)
    on_ok = ~a.cut_start[ma] & ~r.cut_start[mr]
    off_ok = ~a.cut_end[ma] & ~r.cut_end[mr]
    ratio = (a.end[ma] - a.start[ma]) / (r.end[mr] - r.start[mr])
    ratio_ok = on_ok & off_ok
    if background is not None:
        behaviour = r.cls[mr] != background
        # positions just before the onset / at the offset exist where the edge is not cut
        before = ref[np.where(on_ok, r.start[mr] - 1, 0)]
        after = ref[np.where(off_ok, r.end[mr], 0)]
        on_ok &= ~behaviour | (before == background)
        off_ok &= ~behaviour | (after == background)
    onset[~on_ok] = np.nan
    offset[~off_ok] = np.nan
    ratio[~ratio_ok] = np.nan
    return _Matched(
        r_cls=r.cls,
        a_cls=a.cls,
        missed=per_r == 0,
        split=per_r >= 2,
        extra=per_a == 0,
        merged=per_a >= 2,
        cls=r.cls[mr],
        onset=onset,
        offset=offset,
        ratio=ratio,
    )


def _class_bouts(name: str, m: _Matched, ref_in: np.ndarray, ann_in: np.ndarray, pair_in: np.ndarray) -> ClassBouts:
    """The figures of the reference bouts, annotator bouts and matched pairs selected."""
    on, off, ratio = m.onset[pair_in], m.offset[pair_in], m.ratio[pair_in]
    return ClassBouts(
        name=name,
        n_reference=int(ref_in.sum()),
        n_annotator=int(ann_in.sum()),
        n_matched=int(pair_in.sum()),
        onset_lag=spread(on[~np.isnan(on)]),
        offset_lag=spread(off[~np.isnan(off)]),
        duration_ratio=spread(ratio[~np.isnan(ratio)], centre=1.0),
        missed=int((m.missed & ref_in).sum()),
        extra=int((m.extra & ann_in).sum()),
        split=int((m.split & ref_in).sum()),
        merged=int((m.merged & ann_in).sum()),
    )


def bouts(
    ref: Reference,
    offsets: np.ndarray,
    classes: list[str],
    annotators: list[str],
    background: str | None,
    frame_rate: float | None,
) -> Bouts | None:
    """Every annotator's bouts matched to its reference's (see the module docstring).

    `offsets`: sequence i is frames [offsets[i], offsets[i + 1]) (`DatasetStore.offsets`).
    `background`: a class name, or None. With a background, the lags of the other classes are
    measured only at edges where the reference bout borders the background (its own bouts' at
    every edge); with None, at every edge. Per annotator, `classes` has one
    entry per class and `behaviour` pools every class but the background (every class without
    one). None when every sequence has one frame (crowd items have no bouts).
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    if len(offsets) < 2 or int(np.diff(offsets).max()) <= 1:
        return None
    bg: int | None = None
    if background is not None:
        if background not in classes:
            raise InputError("config", "analyze.styles.background", background,
                             f"the background is not one of the classes {classes}")
        bg = classes.index(background)
    pooled_name = POOLED_BEHAVIOUR if bg is not None else POOLED_ALL
    out = []
    for i, name in enumerate(annotators):
        rows = np.asarray(ref.rows[i], dtype=np.int64)
        own = np.asarray(ref.labels[i], dtype=np.int64)
        rv = np.asarray(ref.reference[i], dtype=np.int64)
        seq = np.searchsorted(offsets, rows, side="right") - 1
        seg_break = np.ones(len(rows), bool)
        seg_break[1:] = (np.diff(rows) != 1) | (np.diff(seq) != 0)
        m = _compare(own, rv, seg_break, bg)
        per_class = [
            _class_bouts(c, m, m.r_cls == k, m.a_cls == k, m.cls == k) for k, c in enumerate(classes)
        ]
        nb = -1 if bg is None else bg  # no code is -1: with no background every class pools
        pooled = _class_bouts(pooled_name, m, m.r_cls != nb, m.a_cls != nb, m.cls != nb)
        out.append(AnnotatorBouts(annotator=name, n_sequences=len(np.unique(seq)), classes=per_class,
                                  behaviour=pooled))
    return Bouts(reference=ref.kind, background=background, frame_rate=frame_rate, annotators=out)
