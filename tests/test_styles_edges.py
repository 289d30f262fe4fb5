"""The style explanations on degenerate input: one annotator, no labels at all, one class only,
a reference with no label anywhere, one-frame crowd items. Nothing is compared that is not
there, nobody is flagged, and every card says it has nothing to say."""

from __future__ import annotations

import numpy as np
import pytest

from configs.analyze import StylesConfig
from storage.results.styles import NOTHING_DISTINCTIVE
from tasks.styles.agreement import agreement
from tasks.styles.bouts import bouts
from tasks.styles.cards import annotator_cards
from tasks.styles.consensus import fixed, leave_one_out
from tasks.styles.drift import drift, frame_positions, frame_sequences
from tasks.styles.quality import quality

CLASSES = ["bg", "a", "b"]
RNG = np.random.default_rng(0)
RANDOM = RNG.integers(0, 3, (60, 3)).astype(np.int16)


def explain(labels: np.ndarray, offsets: list[int], track: np.ndarray | None = None):
    labels = np.asarray(labels, np.int16)
    names = [f"x{i}" for i in range(labels.shape[1])]
    ref = leave_one_out(labels, 3) if track is None else fixed(labels, track, 3, "gold")
    agr = agreement(labels, ref, CLASSES, names)
    q = quality(labels, ref, agr, CLASSES, names, StylesConfig())
    b = bouts(ref, np.array(offsets), CLASSES, names, "bg", None)
    d = drift(ref, np.zeros(len(labels), np.int64), frame_positions(np.array(offsets)), names, 0.01,
              frame_sequences(np.array(offsets)))
    return agr, q, b, d, annotator_cards(agr, q, b, d)


CASES = {
    "one annotator": (RANDOM[:, :1], [0, 30, 60], None),
    "no labels": (np.full((60, 3), -1), [0, 30, 60], None),
    "a reference with no label": (RANDOM, [0, 30, 60], np.full(60, -1)),
    "one-frame crowd items": (np.where(RNG.random((60, 3)) < 0.5, RANDOM, -1), list(range(61)), None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_nothing_compared_nothing_said(case):
    labels, offsets, track = CASES[case]
    agr, q, b, d, cards = explain(labels, offsets, track)
    if case != "one-frame crowd items":
        assert all(a.n_compared == 0 and a.agreement is None and a.kappa is None for a in agr.annotators)
        assert b is not None and all(c.n_matched == 0 for a in b.annotators for c in a.classes)
        assert all(c.lines == [NOTHING_DISTINCTIVE] for c in cards), [c.lines for c in cards]
    else:
        assert b is None and all(r.by_position == [] for r in d.annotators)
    assert q.flagged == {} and all(r.flags == [] for r in d.annotators)


def test_one_class_only():
    agr, q, b, d, cards = explain(np.zeros((60, 3)), [0, 30, 60])
    assert agr.krippendorff_alpha is None  # undefined with one value
    for a in agr.annotators:
        assert a.n_compared == 60 and a.agreement == 1.0 and a.kappa is None
    assert q.flagged == {}  # everyone answers the one class, and so do the others: not "constant"
    assert b is not None and all(a.classes[0].n_matched == 2 and a.classes[0].missed == 0 for a in b.annotators)
    assert all(c.lines == [NOTHING_DISTINCTIVE] for c in cards)


def test_flag_evidence_names_the_reference_it_was_compared_with():
    """Against the model's consensus, the evidence says so (not "the others")."""
    rng = np.random.default_rng(1)
    track = rng.integers(0, 3, 300)
    labels = np.stack([np.zeros(300), (track + 1) % 3, track], axis=1).astype(np.int16)  # constant, adversarial, right
    names = ["const", "adv", "good"]
    ref = fixed(labels, track, 3, "model")
    agr = agreement(labels, ref, CLASSES, names)
    q = quality(labels, ref, agr, CLASSES, names, StylesConfig())
    assert q.flagged == {"constant": ["const"], "adversarial": ["adv"]}
    for row in q.annotators:
        for sentence in row.evidence:
            assert "the model's consensus" in sentence and "the others" not in sentence, sentence
