"""Drift (`tasks.styles.drift`): synthetic annotators whose agreement drops in a later batch or at
the ends of their sequences are flagged, stable ones are not; batches and positions of frames."""

from __future__ import annotations

import numpy as np
from conftest import make_batch

from configs.schema import StoreConfig
from storage.dataset_store import open_or_create
from tasks.styles.consensus import fixed
from tasks.styles.drift import drift, frame_batches, frame_positions, frame_sequences

N_SEQ, LENGTH, K = 30, 300, 4  # 9,000 frames in 3 batches of 10 sequences


def synthetic(seed: int = 0):
    """Gold track, labels of five annotators, the batch, position and sequence of every frame.

    a0, a1: stable (85% right everywhere); late: 85% right in batches 0 and 1, 70% in batch 2;
    ends: 90% right in the middle third, 75% in the first and last thirds. With 3,000 frames a
    batch these drops are over 10 standard errors; a stable annotator is flagged with
    probability 0.01 / 5 per test. moody: stable too, but some sequences are harder for it than
    others (its rate is drawn per sequence, uniform in 55-100%): its batches differ by chance
    far more than independent frames would (about 6 binomial standard errors)."""
    rng = np.random.default_rng(seed)
    n = N_SEQ * LENGTH
    gold = rng.integers(0, K, n)
    offsets = np.arange(N_SEQ + 1) * LENGTH
    batch = np.repeat(np.arange(3), n // 3)
    position = frame_positions(offsets)
    sequence = frame_sequences(offsets)
    right = {
        "a0": np.full(n, 0.85), "a1": np.full(n, 0.85),
        "late": np.where(batch == 2, 0.70, 0.85),
        "ends": np.where(position == 1, 0.90, 0.75),
        "moody": rng.uniform(0.55, 1.0, N_SEQ)[sequence],
    }
    labels = np.empty((n, len(right)), np.int64)
    for j, p in enumerate(right.values()):
        wrong = (gold + rng.integers(1, K, n)) % K
        labels[:, j] = np.where(rng.random(n) < p, gold, wrong)
    return gold, labels, list(right), batch, position, sequence


def test_drift_flags_exactly_the_drifting_annotators():
    for seed in (0, 1, 2):
        gold, labels, names, batch, position, sequence = synthetic(seed)
        ref = fixed(labels, gold, K, "gold")
        result = drift(ref, batch, position, names, level=0.01, sequence_of_frame=sequence)
        assert result.alpha == 0.01 / len(names)
        flags = {r.annotator: r.flags for r in result.annotators}
        assert flags == {"a0": [], "a1": [], "late": ["drift_batch"], "ends": ["drift_position"], "moody": []}, seed
        # frames taken as independent, moody's sequence-to-sequence changes look like drift
        plain = drift(ref, batch, position, names, level=0.01)
        assert "drift_batch" in next(r for r in plain.annotators if r.annotator == "moody").flags, seed
        late = next(r for r in result.annotators if r.annotator == "late")
        assert [b.name for b in late.by_batch] == ["0", "1", "2"]
        assert late.by_batch[2].agreement < late.by_batch[0].agreement - 0.1
        assert sum(b.n for b in late.by_batch) == len(gold)
        ends = next(r for r in result.annotators if r.annotator == "ends")
        assert [b.name for b in ends.by_position] == ["start", "middle", "end"]
        assert ends.by_position[1].agreement > ends.by_position[0].agreement


def test_no_batches_and_one_frame_items():
    gold, labels, names, _, _, _ = synthetic()
    ref = fixed(labels, gold, K, "gold")
    items = frame_positions(np.arange(len(gold) + 1))  # every item a one-frame sequence
    assert (items == -1).all()
    result = drift(ref, None, items, names, level=0.01)
    for row in result.annotators:
        assert row.by_batch == [] and row.by_position == []
        assert row.p_batch is None and row.p_position is None and row.flags == []
    one_batch = drift(ref, np.zeros(len(gold), np.int64), None, names, level=0.01)
    assert all(r.p_batch is None and r.flags == [] for r in one_batch.annotators)


def test_frame_positions_are_thirds_of_each_sequence():
    offsets = np.array([0, 1, 4, 10])  # lengths 1, 3, 6
    assert frame_positions(offsets).tolist() == [-1, 0, 1, 2, 0, 0, 1, 1, 2, 2]
    assert frame_sequences(offsets).tolist() == [0, 1, 1, 1, 2, 2, 2, 2, 2, 2]


def test_frame_batches_follow_the_manifest(tmp_path):
    store = open_or_create(str(tmp_path / "ds.zarr"), StoreConfig(chunk_frames=4), ["a", "b", "c"], None)
    store.append(make_batch(["s1", "s2"], [3, 2], ["A"], [0, 1, 2, 0, 1], features=False), progress=False)
    store.append(make_batch(["s3"], [4], ["A"], [2, 2, 1, 0], features=False, source="b2.csv"), progress=False)
    # a third batch only labels existing frames (a new annotator on s1): no frames are added
    store.append(make_batch(["s1"], [3], ["B"], [1, 1, 1], features=False, source="b3.csv"), progress=False)
    assert store.n_frames == 9
    assert frame_batches(store).tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1]


def test_the_demo_has_no_drift():
    """The demo's annotators keep their style throughout (the generator has no drift): none is
    flagged for arbitrary thirds of its sequences or along the position in them. (Frames taken as
    independent, 6 of the 8 are flagged.)"""
    from conftest import CONFIGS

    from configs.schema import load_config
    from tasks.readers import read_source
    from tasks.styles.consensus import leave_one_out

    batch = read_source(load_config(CONFIGS / "demo.yaml"))
    offsets = np.concatenate([[0], np.cumsum(batch.sequence_lengths)])
    sequence = frame_sequences(offsets)
    thirds = (3 * sequence) // len(batch.sequence_lengths)
    ref = leave_one_out(batch.labels, len(batch.classes))
    result = drift(ref, thirds, frame_positions(offsets), batch.annotators, 0.01, sequence)
    assert all(r.flags == [] for r in result.annotators), [(r.annotator, r.p_batch, r.p_position)
                                                           for r in result.annotators]
