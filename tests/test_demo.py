"""The demo generator: deterministic, well-formed, and its styles and behaviour are visible."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from configs.schema import load_config
from configs.sources import DemoSource
from tasks.demo import (
    ATTACK,
    CLASSES,
    INVESTIGATION,
    OTHER,
    AnnotatorStyle,
    Bouts,
    DemoSpec,
    annotate,
    assign_sequences,
    generate_batch,
    simulate_behaviour,
    simulate_keypoints,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def batch():
    b = generate_batch(DemoSource(kind="demo"))
    b.validate()
    return b


def _groups(batch) -> dict[str, list[int]]:
    truth = batch.meta["truth"]["style_groups"]
    out: dict[str, list[int]] = {}
    for i, name in enumerate(batch.annotators):
        out.setdefault(truth[name], []).append(i)
    return out


def _bout_lengths(labels: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Lengths of the runs of non-"other" labels, not crossing sequence borders."""
    out = []
    for seq in np.split(labels, np.cumsum(lengths)[:-1]):
        if (seq < 0).all():
            continue
        active = np.r_[False, seq > OTHER, False]
        change = np.flatnonzero(np.diff(active.astype(np.int8)) != 0)
        out.append(change[1::2] - change[::2])
    return np.concatenate(out)


def test_deterministic_and_seed_dependent():
    small = DemoSource(kind="demo", n_sequences=4, sequence_length=300)
    a, b = generate_batch(small), generate_batch(small)
    assert a.content_hash() == b.content_hash()
    assert np.array_equal(a.features, b.features) and np.array_equal(a.labels, b.labels)
    c = generate_batch(small.model_copy(update={"seed": 1}))
    assert not np.array_equal(a.features, c.features)
    assert not np.array_equal(a.gold, c.gold)


def test_shapes_dtypes_and_meta(batch):
    spec = DemoSpec.from_source(DemoSource(kind="demo"))
    n = spec.n_sequences * spec.sequence_length
    assert batch.features.shape == (n, 28) and batch.features.dtype == np.float32
    assert batch.labels.shape == (n, spec.n_annotators) and batch.labels.dtype == np.int16
    assert batch.gold.shape == (n,) and batch.gold.dtype == np.int16
    assert batch.sequence_lengths.dtype == np.int64 and batch.sequence_lengths.sum() == n
    assert batch.sequence_names[0] == "seq0000" and batch.annotators == [f"ann{i}" for i in range(8)]
    assert batch.classes == list(CLASSES) and batch.item_names is None
    assert batch.sources["labels"].startswith("demo(seed=0, size=demo")
    assert np.isfinite(batch.features).all()
    assert set(np.unique(batch.gold)) == set(range(4))
    assert batch.labels.min() == -1 and batch.labels.max() == 3
    truth = batch.meta["truth"]["style_groups"]
    assert set(truth) == set(batch.annotators) and set(truth.values()) == {"lenient", "strict", "confuser"}
    assert batch.meta["generator"]["n_sequences"] == 48
    assert json.loads(json.dumps(batch.meta)) == batch.meta
    # other is the most common class
    assert np.bincount(batch.gold).argmax() == OTHER


def test_coverage(batch):
    labelled = batch.labels >= 0
    assert labelled.sum(axis=0).min() > 0.3 * batch.n_frames
    for a, b in itertools.combinations(range(labelled.shape[1]), 2):
        assert (labelled[:, a] & labelled[:, b]).sum() > 0, (a, b)
    # whole sequences, about half of the annotators each
    per_seq = labelled[:: batch.sequence_lengths[0]].sum(axis=1)
    assert per_seq.min() >= 2 and abs(per_seq.mean() - 4) < 1


def test_assignment_covers_pairs_with_few_sequences():
    plan = assign_sequences(2, 8, 4, np.random.default_rng(0))
    assert plan.any(axis=0).all()
    assert all((plan[:, a] & plan[:, b]).any() for a, b in itertools.combinations(range(8), 2))


def test_lenient_bouts_longer_than_strict(batch):
    """On the frames a lenient and a strict annotator share, the lenient one's behaviour bouts
    (runs of non-"other" labels; runs under 10 frames are slips) are longer and cover more."""
    groups = _groups(batch)
    bouts, active = {"lenient": [], "strict": []}, {"lenient": [], "strict": []}
    for a, b in itertools.product(groups["lenient"], groups["strict"]):
        both = (batch.labels[:, a] >= 0) & (batch.labels[:, b] >= 0)
        for name, col in (("lenient", a), ("strict", b)):
            runs = _bout_lengths(np.where(both, batch.labels[:, col], -1), batch.sequence_lengths)
            bouts[name].append(runs[runs >= 10].mean())
            active[name].append((batch.labels[both, col] > OTHER).mean())
    assert np.mean(bouts["lenient"]) > np.mean(bouts["strict"]) + 5, bouts
    assert np.mean(active["lenient"]) > np.mean(active["strict"]) + 0.05, active


def test_confuser_labels_attack_as_investigation(batch):
    groups = _groups(batch)
    attack = batch.gold == ATTACK
    rate = {
        name: np.mean(
            [(batch.labels[attack & (batch.labels[:, a] >= 0), a] == INVESTIGATION).mean() for a in idx]
        )
        for name, idx in groups.items()
    }
    assert rate["confuser"] > 0.4
    assert rate["confuser"] > 3 * max(rate["lenient"], rate["strict"])


def test_within_group_disagreement_below_between(batch):
    n = len(batch.annotators)
    dis = np.full((n, n), np.nan)
    for a, b in itertools.combinations(range(n), 2):
        both = (batch.labels[:, a] >= 0) & (batch.labels[:, b] >= 0)
        dis[a, b] = dis[b, a] = (batch.labels[both, a] != batch.labels[both, b]).mean()
    groups = _groups(batch)
    within = {g: np.nanmean(dis[np.ix_(i, i)]) for g, i in groups.items()}
    for g, h in itertools.combinations(groups, 2):
        between = dis[np.ix_(groups[g], groups[h])]
        assert between.mean() > 1.5 * max(within[g], within[h]), (g, h, between.mean(), within)
        assert between.min() > max(within[g], within[h]), (g, h)


def test_small_override():
    src = DemoSource(kind="demo", n_sequences=3, sequence_length=120, n_annotators=6, n_groups=2, seed=5)
    b = generate_batch(src)
    b.validate()
    assert (
        b.sources["labels"]
        == "demo(seed=5, size=demo, n_sequences=3, sequence_length=120, n_annotators=6, n_groups=2)"
    )
    assert b.n_frames == 360 and len(b.annotators) == 6 and b.features.shape == (360, 28)
    assert set(b.meta["truth"]["style_groups"].values()) == {"lenient", "strict"}
    assert (b.labels >= 0).any(axis=0).all()
    # the first sequences do not depend on how many follow
    more = generate_batch(src.model_copy(update={"n_sequences": 5}))
    assert np.array_equal(more.features[:360], b.features) and np.array_equal(more.gold[:360], b.gold)


def test_parts_alone():
    rng = np.random.default_rng(3)
    bouts = simulate_behaviour(500, rng)
    assert bouts.length == 500 and (bouts.lengths > 0).all()
    assert (np.diff(bouts.classes) != 0).all()
    feats = simulate_keypoints(bouts, rng)
    assert feats.shape == (500, 28) and feats.dtype == np.float32 and np.isfinite(feats).all()
    # a lenient annotator extends a bout into the background, a strict one shortens it
    track = Bouts(np.array([OTHER, ATTACK, OTHER]), np.array([20, 20, 20]), np.array([0.9, 0.9, 0.9]))
    style = AnnotatorStyle("a", "lenient", 3, 2, 0.0, 0.0)
    assert (annotate(track, style, rng) == ATTACK).sum() == 25
    strict = AnnotatorStyle("b", "strict", -3, -2, 0.0, 0.0)
    assert (annotate(track, strict, rng) == ATTACK).sum() == 15
    confuser = AnnotatorStyle("c", "confuser", 0, 0, 0.95, 0.0)
    assert (annotate(track, confuser, rng) == INVESTIGATION).sum() == 20
    tiny = Bouts(np.array([OTHER, ATTACK, OTHER]), np.array([20, 4, 20]), np.array([0.9, 0.9, 0.9]))
    assert (annotate(tiny, strict, rng) == OTHER).all()


def _window_features(features: np.ndarray, lengths: np.ndarray, half: int = 10) -> np.ndarray:
    """Per frame: inter-agent distance, facing, both speeds; mean and std over +-half frames."""
    out = []
    for seq in np.split(features.astype(np.float64), np.cumsum(lengths)[:-1]):
        kp = seq.reshape(len(seq), 2, 7, 2)
        centre = kp.mean(axis=2)
        rel = centre[:, 1] - centre[:, 0]
        dist = np.linalg.norm(rel, axis=1)
        head = kp[:, 0, 0] - kp[:, 0, 6]
        facing = (head * rel).sum(axis=1) / (np.linalg.norm(head, axis=1) * dist + 1e-9)
        speed = np.linalg.norm(np.diff(centre, axis=0, prepend=centre[:1]), axis=2)
        base = np.column_stack([dist, facing, speed])
        pad = np.pad(base, ((half, half), (0, 0)), mode="edge")
        win = np.lib.stride_tricks.sliding_window_view(pad, 2 * half + 1, axis=0)
        out.append(np.column_stack([win.mean(axis=2), win.std(axis=2)]))
    return np.concatenate(out)


def test_behaviour_learnable_from_short_windows(batch):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = _window_features(batch.features, batch.sequence_lengths)
    split = int(batch.sequence_lengths[: len(batch.sequence_lengths) * 3 // 4].sum())
    scaler = StandardScaler().fit(x[:split])
    model = LogisticRegression(max_iter=300).fit(scaler.transform(x[:split:2]), batch.gold[:split:2])
    test_gold = batch.gold[split:]
    accuracy = (model.predict(scaler.transform(x[split:])) == test_gold).mean()
    majority = (test_gold == np.bincount(batch.gold[:split]).argmax()).mean()
    assert accuracy > majority + 0.2, (accuracy, majority)


def test_demo_config_loads():
    config = load_config(ROOT / "configs" / "demo.yaml")
    assert config.name == "demo" and config.source.kind == "demo"
    assert config.source.size == "demo" and config.source.seed == 0
