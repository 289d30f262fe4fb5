"""Annotator quality (`tasks.styles.quality`): planted spammers in real crowds get exactly their
flags; real annotators' flags are backed by gold; the scores follow gold accuracy."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CONFIGS, SHARED
from scipy import stats
from scipy.stats import spearmanr

from configs.analyze import StylesConfig
from configs.schema import load_config
from tasks.readers import read_source
from tasks.styles.agreement import agreement
from tasks.styles.consensus import leave_one_out
from tasks.styles.quality import quality

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/datasets")
PLANTED = ["planted_constant", "planted_random", "planted_adversarial"]
# items each planted annotator labels: rte's 800 items all (a random binary labeller needs about
# 400 items before kappa's Bonferroni-corrected upper bound can fall below 0.2); 500 of LabelMe's
# 1,000 crowd-labelled images (8 classes narrow the bound sooner); all 177 of wsd's
N_ITEMS = {"rte": 800, "labelme": 500, "wsd": 177}


def load(name: str):
    return read_source(load_config(CONFIGS / f"{name}.yaml"))


def plant(batch, n_items: int, seed: int = 0):
    """The batch's labels with three annotators added on `n_items` random crowd-labelled items:
    one always giving the crowd's most used class, one uniformly random, one always wrong (a random
    class other than gold)."""
    rng = np.random.default_rng(seed)
    labels, k = batch.labels, len(batch.classes)
    labelled = np.flatnonzero((labels >= 0).any(axis=1) & (batch.gold >= 0))
    items = rng.choice(labelled, size=n_items, replace=False)
    added = np.full((len(labels), 3), -1, labels.dtype)
    added[items, 0] = np.bincount(labels[labels >= 0], minlength=k).argmax()
    added[items, 1] = rng.integers(0, k, n_items)
    added[items, 2] = (batch.gold[items] + rng.integers(1, k, n_items)) % k
    return np.concatenate([labels, added], axis=1), [*batch.annotators, *PLANTED]


def run(labels, classes, annotators, cfg=None):
    ref = leave_one_out(labels, len(classes))
    agr = agreement(labels, ref, classes, annotators)
    return agr, quality(labels, ref, agr, classes, annotators, cfg or StylesConfig())


def no_better_than_chance_on_gold(labels, gold, a, level):
    """True when annotator a's accuracy on gold is not significantly above what its own label
    distribution would score by chance against gold's (one-sided binomial test)."""
    m = (labels[:, a] >= 0) & (gold >= 0)
    own, truth = labels[m, a], gold[m]
    k = int(max(own.max(), truth.max())) + 1
    chance = float(np.bincount(own, minlength=k) @ np.bincount(truth, minlength=k)) / m.sum() ** 2
    hits = int((own == truth).sum())
    return stats.binomtest(hits, int(m.sum()), chance, alternative="greater").pvalue > level


@pytest.mark.parametrize("name", ["rte", "labelme", "wsd"])
def test_planted_spammers_get_exactly_their_flags(name):
    batch = load(name)
    labels, annotators = plant(batch, N_ITEMS[name])
    agr, q = run(labels, batch.classes, annotators)
    by_name = {r.annotator: r for r in q.annotators}
    assert by_name["planted_constant"].flags == ["constant"]
    assert by_name["planted_random"].flags == ["near_random"]
    assert by_name["planted_adversarial"].flags == ["adversarial"]
    assert q.flagged.get("adversarial") == ["planted_adversarial"]  # no real annotator is adversarial
    for row in q.annotators:
        assert len(row.evidence) == len(row.flags)
        for sentence in row.evidence:
            assert str(row.n_compared) in sentence
    # the adversarial one scores lowest on both scores
    adversarial = by_name["planted_adversarial"]
    assert adversarial.dawid_skene == min(r.dawid_skene for r in q.annotators if r.dawid_skene is not None)
    real = [r for r in q.annotators if r.annotator not in PLANTED and r.agreement_score is not None]
    assert adversarial.agreement_score < min(r.agreement_score for r in real)
    # a real annotator is flagged constant only when it gave one answer and gold says it is no
    # better than chance; near-random likewise (their figures are in the session's report)
    gold = batch.gold
    for flag in ("constant", "near_random"):
        for who in q.flagged.get(flag, []):
            if who in PLANTED:
                continue
            a = annotators.index(who)
            assert no_better_than_chance_on_gold(labels, gold, a, 0.01), (flag, who, by_name[who].evidence)
            if flag == "constant":
                assert by_name[who].top_share >= StylesConfig().constant_share
    if name == "labelme":
        assert sorted(q.flagged.get("constant", [])) == ["planted_constant"]
        assert sorted(q.flagged.get("near_random", [])) == ["planted_random"]


def test_real_flags_on_other_crowds_are_backed_by_gold():
    """On crowds without planted annotators (temp has real one-answer workers, bluebirds
    hard-to-tell birds), every flagged annotator is no better than chance against gold, and the
    annotators that are clearly better than chance are never flagged."""
    for name in ("temp", "bluebirds"):
        batch = load(name)
        _, q = run(batch.labels, batch.classes, batch.annotators)
        flagged = {w for names in q.flagged.values() for w in names}
        assert flagged, name
        for who in flagged:
            a = batch.annotators.index(who)
            assert no_better_than_chance_on_gold(batch.labels, batch.gold, a, 0.01), (name, who)


def test_no_flags_below_min_labels():
    batch = load("rte")
    labels, annotators = plant(batch, 800)
    few = np.flatnonzero(labels[:, -1] >= 0)[9:]
    labels[few, -3:] = -1  # the planted annotators keep 9 labels each
    cfg = StylesConfig(min_labels=10)
    _, q = run(labels, batch.classes, annotators, cfg)
    for row in q.annotators[-3:]:
        assert row.n_compared == 9 and row.flags == [] and row.evidence == []


@pytest.mark.parametrize("name", ["rte", "bluebirds"])
def test_scores_follow_gold_accuracy(name):
    batch = load(name)
    _, q = run(batch.labels, batch.classes, batch.annotators)
    acc, ds, score = [], [], []
    for a, row in enumerate(q.annotators):
        m = (batch.labels[:, a] >= 0) & (batch.gold >= 0)
        if m.sum() >= 30:
            acc.append(np.mean(batch.labels[m, a] == batch.gold[m]))
            ds.append(row.dawid_skene)
            score.append(row.agreement_score)
    assert len(acc) >= 30
    assert spearmanr(acc, ds)[0] > 0.5
    assert spearmanr(acc, score)[0] > 0.5
    assert all(0 <= s <= 1 for s in ds + score)
