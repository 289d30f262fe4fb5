"""Annotator quality: two scores per annotator and the flags its numbers support.

Scores
- `dawid_skene`: crowd-kit's `DawidSkene` (full confusion matrices, EM from majority vote) fitted
  on every label; crowd-kit 1.4.2's DawidSkene has no `skills_`, so the skill is the accuracy its
  model implies, sum_c prior[c] * P(annotator says c | true class c) (`errors_`, `priors_`).
- `agreement_score`, in the manner of cleanlab's CROWDLAB annotator quality, which is
  w * (mean label quality of the annotator's labels under a posterior) + (1 - w) * (agreement
  with the consensus), w = model_weight / (model_weight + sum(annotator weights) * mean labels
  per item / annotators). There is no model here, so the "model" is the soft vote of the *other*
  annotators on each item, with the crowd's class prior as one extra pseudo-vote (it shrinks items
  with few labels towards the crowd's label distribution); the label quality is its
  self-confidence, the share that soft vote gives the annotator's label. The weights follow
  CROWDLAB: an annotator's weight is 1 - (its disagreement with the others on shared items) /
  (the error of always answering the consensus's most common class), clipped at 1e-6; the model
  weight is the same formula for the soft vote's argmax against the leave-one-out reference,
  times sqrt(mean labels per item). The agreement term is against the leave-one-out reference
  (cleanlab's consensus includes the annotator itself, which inflates its agreement).

Flags (none for an annotator with fewer than `cfg.min_labels` compared labels; every test is at
`cfg.level / m`, Bonferroni over the m annotators that are tested)
- constant: one answer on at least `cfg.constant_share` of its compared labels while the reference
  gives that answer significantly less often than `cfg.constant_share` on the same items
  (one-sided binomial test). A constant annotator's kappa is about 0 by construction, so it is
  not also flagged near-random.
- adversarial: agreement significantly worse than chance: the one-sided upper confidence bound of
  kappa (`kappa_upper`: the larger of kappa + z se, with Fleiss-Cohen-Everitt's se, and the bound
  from the Wilson interval of the agreement) is below 0.
- near-random: that upper bound is below `cfg.slight_kappa` (0.2, the top of Landis & Koch's
  "slight agreement") but not below 0: the data rule out even fair agreement with the others.
  Few labels give a wide bound, so nobody is called near-random for lack of evidence. Neither
  kappa flag is given when the annotator or its reference uses one class only on the compared
  items: kappa is then 0 whatever the skill (its standard error degenerates to 0).
"""

from __future__ import annotations

import numpy as np
from crowdkit.aggregation import DawidSkene
from scipy import stats

from configs.analyze import StylesConfig
from storage.results.styles import Agreement, AnnotatorQuality, Quality, QualityFlag
from tasks.aggregate import CrowdAggregate
from tasks.styles.agreement import wilson
from tasks.styles.cards import REFERENCE_WORDS
from tasks.styles.consensus import Reference, class_prior, others_votes, vote_counts

CLIP = 1e-6  # CROWDLAB's lower clip of weights and errors


def dawid_skene_skills(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Each annotator's accuracy implied by crowd-kit's Dawid-Skene fit (NaN: no labels)."""
    skills = np.full(labels.shape[1], np.nan)
    ds = CrowdAggregate("ds", n_classes).fit(labels).model_
    if not isinstance(ds, DawidSkene):  # no labels at all
        return skills
    errors = ds.errors_
    priors = ds.priors_
    if errors is None or priors is None:
        return skills
    for (worker, said), row in errors.iterrows():  # (annotator, label) x true class: P(said | true)
        if said in row.index and said in priors.index:
            w = int(worker)
            skills[w] = (0.0 if np.isnan(skills[w]) else skills[w]) + float(priors[said]) * float(row[said])
    return skills


def crowdlab_scores(labels: np.ndarray, ref: Reference, agreement_rate: np.ndarray) -> np.ndarray:
    """The CROWDLAB-style score of every annotator (see the module docstring; NaN: nothing compared)."""
    k = ref.n_classes
    counts = vote_counts(labels, k).astype(np.float64)
    n_item = counts.sum(axis=1)
    prior = class_prior(labels, k)
    multi = n_item >= 2
    m = labels.shape[1]
    # the error of always answering the most common class of the all-annotator consensus
    consensus = np.argmax(counts[multi] + prior * 1e-3, axis=1)
    if len(consensus):
        mode = np.bincount(consensus, minlength=k).argmax()
        class_error = max(float(np.mean(consensus != mode)), CLIP)
    else:
        class_error = CLIP
    lqs = np.full(m, np.nan)
    with_others = np.full(m, np.nan)
    model_wrong, model_n = 0, 0
    for a in range(m):
        r, own = ref.rows[a], ref.labels[a]
        if not len(r):
            continue
        others = others_votes(counts, r, own)
        n_o = others.sum(axis=1)
        soft = (others + prior) / (n_o + 1.0)[:, None]
        lqs[a] = float(soft[np.arange(len(r)), own].mean())
        share = others[np.arange(len(r)), own] / np.maximum(n_o, 1.0)
        with_others[a] = float(share[n_o > 0].mean()) if (n_o > 0).any() else np.nan
        model_wrong += int((np.argmax(soft, axis=1) != ref.reference[a]).sum())
        model_n += len(r)
    weights = np.clip(1.0 - (1.0 - np.nan_to_num(with_others, nan=0.0)) / class_error, CLIP, None)
    model_error = model_wrong / model_n if model_n else 1.0
    model_weight = max(1.0 - model_error / class_error, CLIP) * np.sqrt(float(n_item[n_item > 0].mean())
                                                                        if (n_item > 0).any() else 0.0)
    adjusted = float(weights.sum()) * (float(n_item[n_item > 0].mean()) if (n_item > 0).any() else 0.0) / m
    w = model_weight / (model_weight + adjusted) if model_weight + adjusted > 0 else 0.0
    return w * lqs + (1.0 - w) * agreement_rate


def kappa_upper(kappa: float | None, se: float | None, hits: int, n: int, chance: float | None,
                level: float) -> float:
    """One-sided upper confidence bound of kappa at `level`: the larger of the asymptotic one
    (kappa + z se) and the one from the Wilson bound of the agreement with chance agreement held
    at its observed value, (wilson_high - p_e) / (1 - p_e). The asymptotic standard error is far
    too small for a few items with skewed labels (20 rte items gave a bound of 0.10 at kappa
    -0.18); the Wilson bound is right there, and the larger of the two keeps the flags honest."""
    if kappa is None or se is None or chance is None or n <= 0 or chance >= 1.0:
        return float("nan")
    asymptotic = kappa + float(stats.norm.ppf(1.0 - level)) * se
    high = wilson(hits, n, confidence=1.0 - 2.0 * level).high  # its upper bound is one-sided at `level`
    assert high is not None
    return max(asymptotic, (high - chance) / (1.0 - chance))


def _flags(a: int, ref: Reference, agr: Agreement, classes: list[str], cfg: StylesConfig,
           level: float) -> tuple[list[QualityFlag], list[str], float]:
    """The flags of annotator a, their evidence sentences, and kappa's upper bound."""
    row = agr.annotators[a]
    own, theirs = ref.labels[a], ref.reference[a]
    n = len(own)
    upper = kappa_upper(row.kappa, row.kappa_se, int(np.sum(own == theirs)), n, row.chance, level)
    flags: list[QualityFlag] = []
    evidence: list[str] = []
    whom = REFERENCE_WORDS[ref.kind]  # "the others", or the model's consensus it was compared with
    if n < cfg.min_labels:
        return flags, evidence, upper
    top = int(np.bincount(own, minlength=ref.n_classes).argmax())
    share = float(np.mean(own == top))
    ref_hits = int(np.sum(theirs == top))
    if share >= cfg.constant_share:
        p = float(stats.binomtest(ref_hits, n, cfg.constant_share, alternative="less").pvalue)
        if p < level:
            flags.append("constant")
            evidence.append(
                f"constant: answers {classes[top]} on {share:.0%} of its {n} compared labels, while "
                f"{whom} {'gives' if ref.kind == 'model' else 'give'} {classes[top]} on {ref_hits / n:.0%} of the same items (binomial test against "
                f"{cfg.constant_share:.0%}: p = {p:.2g} < {level:.2g})")
            return flags, evidence, upper
    # kappa is 0 whatever the skill when either side gives one class only: no evidence there
    informative = len(np.unique(own)) > 1 and len(np.unique(theirs)) > 1
    if informative and np.isfinite(upper) and row.agreement is not None and row.chance is not None \
            and row.kappa is not None:
        if upper < 0.0:
            flags.append("adversarial")
            evidence.append(
                f"adversarial: agrees with {whom} on {row.agreement:.0%} of {n} items, below chance "
                f"({row.chance:.0%}); kappa {row.kappa:.2f}, its one-sided {1 - level:.4%} upper bound "
                f"{upper:.2f} < 0")
        elif upper < cfg.slight_kappa:
            flags.append("near_random")
            evidence.append(
                f"near-random: agrees with {whom} on {row.agreement:.0%} of {n} items (chance "
                f"{row.chance:.0%}); kappa {row.kappa:.2f}, its one-sided {1 - level:.4%} upper bound "
                f"{upper:.2f} < {cfg.slight_kappa:g} (slight agreement)")
    return flags, evidence, upper


def quality(labels: np.ndarray, ref: Reference, agreement_result: Agreement, classes: list[str],
            annotators: list[str], cfg: StylesConfig) -> Quality:
    """Dawid-Skene and CROWDLAB-style scores of every annotator, and the flags of the module
    docstring with one evidence sentence each."""
    labels = np.asarray(labels)
    k = len(classes)
    n_labels = (labels >= 0).sum(axis=0)
    rate = np.array([np.nan if r.agreement is None else r.agreement for r in agreement_result.annotators])
    skills = dawid_skene_skills(labels, k)
    scores = crowdlab_scores(labels, ref, rate)
    tested = sum(len(ref.labels[a]) >= cfg.min_labels for a in range(len(annotators)))
    level = cfg.level / max(tested, 1)
    out: list[AnnotatorQuality] = []
    flagged: dict[str, list[str]] = {}
    for a, name in enumerate(annotators):
        mine = labels[:, a][labels[:, a] >= 0].astype(np.int64)
        counts = np.bincount(mine, minlength=k)
        top = int(counts.argmax())
        flags, evidence, upper = _flags(a, ref, agreement_result, classes, cfg, level)
        for flag in flags:
            flagged.setdefault(flag, []).append(name)
        out.append(AnnotatorQuality(
            annotator=name, n_labels=int(n_labels[a]), dawid_skene=float(skills[a]),
            agreement_score=float(scores[a]), top_label=classes[top] if len(mine) else "",
            top_share=float(counts[top] / len(mine)) if len(mine) else None,
            flags=flags, evidence=evidence, n_compared=len(ref.labels[a]), kappa_upper=upper,
        ))
    return Quality(annotators=out, flagged=flagged, level=level)
