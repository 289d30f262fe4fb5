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
# items each planted annotator labels: all of rte's 800 and wsd's 177, 500 of LabelMe's 1,000
# crowd-labelled images
N_ITEMS = {"rte": 800, "labelme": 500, "wsd": 177}
# Whether the uniform-random one must be shown near-random. For a random labeller the expected
# upper bound of kappa (from the Wilson bound of agreement at level 0.01 / annotators) is about
# z sqrt(p0 (1 - p0) / n) / (1 - p0), p0 = 1 / K, and kappa itself scatters by about
# sqrt(p0 (1 - p0) / n) / (1 - p0): LabelMe (K = 8, n = 500, z = 3.5) 0.06 + 3 x 0.016 < 0.2, so it
# must be flagged; rte (K = 2, n = 800, z = 3.8) 0.14 + 3 x 0.035 and wsd (K = 3, n = 177, z = 3.5)
# 0.18 + 3 x 0.05 are not clear of 0.2, so there it may be flagged near-random or not, nothing else.
RANDOM_MUST_FLAG = {"rte": False, "labelme": True, "wsd": False}


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
    if RANDOM_MUST_FLAG[name]:
        assert by_name["planted_random"].flags == ["near_random"]
    else:
        assert by_name["planted_random"].flags in ([], ["near_random"])
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


def test_few_skewed_items_are_not_evidence():
    """20 items, both sides answering 1 on 17 of them, 14 agreements (kappa -0.18, chance 74.5%:
    what a real rte worker gave): the asymptotic standard error alone puts kappa's corrected upper
    bound below 'slight'; the Wilson-based bound says 20 items cannot tell, so nobody is flagged."""
    ref_labels = np.array([1] * 17 + [0] * 3)
    own = np.array([1] * 14 + [0] * 3 + [1] * 3)  # agrees on 14 of 20
    labels = np.stack([own, ref_labels, ref_labels], axis=1).astype(np.int16)
    agr, q = run(labels, ["0", "1"], ["a", "b", "c"])
    row = agr.annotators[0]
    assert row.n_compared == 20 and row.agreement == pytest.approx(0.7) and row.kappa < 0
    assert row.kappa + stats.norm.ppf(1 - q.level) * row.kappa_se < 0.2  # the asymptotic bound alone
    assert q.annotators[0].flags == [] and q.annotators[0].kappa_upper > 0.2
