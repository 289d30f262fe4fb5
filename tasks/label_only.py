"""The train stage of a label-only dataset: no model, the crowd-kit aggregators' consensus instead.

Apart from `tasks.train` (which imports torch) so that a label-only run never imports torch:
`flows.train` calls this directly when the store has no features.
"""

from __future__ import annotations

import logging

from configs.schema import PipelineConfig
from storage.dataset_store import DatasetStore
from storage.results.train import TrainMetrics, TrainResult
from tasks.aggregate import aggregator_report

log = logging.getLogger("tasks.train")

NEEDS_FEATURES = ("training needs per-frame features and this dataset has labels only; the consensus "
                  "comes from the crowd-kit aggregators (MV, DS) instead of a model")


def label_only_result(config: PipelineConfig, store: DatasetStore) -> TrainResult:
    """No features: no model; the aggregators' consensus against gold instead."""
    log.warning("%s: %s", config.name, NEEDS_FEATURES)
    report = aggregator_report(store.read_labels(), store.read_gold(), store.n_classes, store.annotators,
                               config.train.baselines or ["mv", "ds"])
    return TrainResult(dataset=config.name, version=store.version, store=store.uri, head=None,
                       reason=NEEDS_FEATURES, model_run_id=None, model_dir=None, device=None, epochs=0,
                       annotators=store.annotators, classes=store.classes,
                       metrics=TrainMetrics(mv=report.get("mv"), ds=report.get("ds")))
