"""Style explanations: what sets each annotator and each cluster apart, in numbers and in words.

`explain` compares every annotator with its reference (`consensus`: the other annotators'
majority by default), then derives agreement and confusions (`agreement`), quality scores and
flags (`quality`), bout timing for frame sequences (`bouts`), drift over batches and along the
sequences (`drift`) and the plain-word style cards (`cards`). The analyze stage calls it on
label-only data and on data with a model alike: it needs only the labels.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from configs.analyze import StylesConfig
from errors import InputError
from storage.dataset_store import DatasetStore
from storage.results.styles import StylesReport
from tasks.clustering import best_k
from tasks.styles.agreement import agreement
from tasks.styles.bouts import bouts
from tasks.styles.cards import annotator_cards, cluster_cards
from tasks.styles.consensus import Reference, fixed, leave_one_out
from tasks.styles.drift import drift, frame_batches, frame_positions, frame_sequences
from tasks.styles.quality import quality

__all__ = ["explain"]


def explain(dataset: DatasetStore, cfg: StylesConfig, matrix: np.ndarray,
            clusters: Mapping[str, Mapping[str, int]], model_track: np.ndarray | None = None) -> StylesReport:
    """The style report of a dataset's annotators.

    `matrix` and `clusters` are the analysis's annotator distances and cuts (the cluster cards
    describe the cut with the best silhouette); `model_track` is the model's consensus label per
    frame, needed only when `cfg.reference` is "model".
    """
    seconds: dict[str, float] = {}

    def timed(name: str, t: float) -> None:
        seconds[name] = round(time.perf_counter() - t, 4)

    t = time.perf_counter()
    labels = dataset.read_labels()
    names = dataset.class_names
    annotators = dataset.annotators
    offsets = np.asarray(dataset.offsets, np.int64)
    if cfg.background is not None and cfg.background not in names:
        raise InputError(dataset.uri, "analyze.styles.background", cfg.background,
                         f"not a class of the dataset (classes: {', '.join(names)})")
    ref = _reference(dataset, labels, len(names), cfg, model_track)
    timed("reference", t)  # reading the labels included
    t = time.perf_counter()
    agree = agreement(labels, ref, names, annotators)
    timed("agreement", t)
    t = time.perf_counter()
    scores = quality(labels, ref, agree, names, annotators, cfg)
    timed("quality", t)
    t = time.perf_counter()
    frame_rate = cfg.frame_rate or dataset.meta.get("frame_rate")  # the config's, else the reader's (BORIS)
    timing = bouts(ref, offsets, names, annotators, cfg.background, frame_rate)
    timed("bouts", t)
    t = time.perf_counter()
    # whole sequences are the sampled units of the drift test (frames of a sequence are not independent);
    # one-frame items have no position (-1), and drift then leaves positions out
    moves = drift(ref, frame_batches(dataset), frame_positions(offsets), annotators, cfg.level,
                  frame_sequences(offsets))
    timed("drift", t)
    t = time.perf_counter()
    k = best_k(matrix, clusters, annotators)
    cut = dict(clusters[str(k)]) if k is not None else {}
    cards = annotator_cards(agree, scores, timing, moves)
    if k is not None:
        cards += cluster_cards(agree, scores, timing, moves, cut, k)
    timed("cards", t)
    return StylesReport(reference=ref.kind, k=k, clusters=cut, agreement=agree, quality=scores, bouts=timing,
                        drift=moves, cards=cards, seconds=seconds)


def _reference(dataset: DatasetStore, labels: np.ndarray, n_classes: int, cfg: StylesConfig,
               model_track: np.ndarray | None) -> Reference:
    if cfg.reference == "others":
        return leave_one_out(labels, n_classes, cfg.min_others)
    if model_track is None:
        raise InputError(dataset.uri, "analyze.styles.reference", cfg.reference,
                         "the model's consensus needs a prediction store (run `annostyle predict` first, "
                         "or use reference: others)")
    return fixed(labels, model_track, n_classes, "model")
