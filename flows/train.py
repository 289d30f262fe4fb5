"""The training flow: config -> trained model (or aggregators for label-only data) -> MLflow run.

Also the Prefect tasks of training and fine-tuning (`train_task`, `finetune_task`) that the
pipeline and reprocess flows run, and `record_training`, the one way a training is recorded.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from configs.schema import PipelineConfig, load_config
from flows.retry import retry_unless_bad_input
from storage.dataset_store import DatasetStore
from storage.layout import RootLayout
from storage.results.train import AggregatorMetrics, FinetuneResult, MeanSd, TrainResult
from tasks.label_only import label_only_result

log = logging.getLogger(__name__)


def train_model(config: PipelineConfig, layout: RootLayout) -> TrainResult:
    """`tasks.train.train_model`; a label-only store goes straight to its aggregators, so that
    it never imports torch (tasks.train does)."""
    store = DatasetStore.open(layout.dataset_uri(config.name))
    if store.n_frames and not store.has_features:
        return label_only_result(config, store)
    from tasks.train import train_model as train_with_torch

    return train_with_torch(config, layout)


def finetune_new_annotators(config: PipelineConfig, layout: RootLayout, model_dir: Path, store: DatasetStore,
                            **options: Any) -> FinetuneResult:
    """`tasks.finetune.finetune_new_annotators`, imported when it runs (it imports torch)."""
    from tasks.finetune import finetune_new_annotators as finetune

    return finetune(config, layout, model_dir, store, **options)


train_task = task(name="train", retries=1, retry_delay_seconds=[2], cache_policy=NO_CACHE,
                  retry_condition_fn=retry_unless_bad_input)(train_model)
"""Prefect task; a retry after a crash resumes from the checkpoint."""

finetune_task = task(name="finetune", retries=1, retry_delay_seconds=[2], cache_policy=NO_CACHE,
                     retry_condition_fn=retry_unless_bad_input)(finetune_new_annotators)
"""Prefect task of fine-tuning a head for new annotators."""


@flow(name="train", validate_parameters=False)
def train_flow(config_path: str, root: str) -> TrainResult:
    """Train the config's annotator model and baselines on its ingested store; record the run."""
    config = load_config(config_path)
    return train_and_record(config, RootLayout(Path(root), config.store.uri_prefix), Path(config_path))


def record_training(layout: RootLayout, config: PipelineConfig, result: TrainResult,
                    config_path: Path | None = None) -> TrainResult:
    """Record a training in MLflow (the figures the train stage drew, the model and its example
    gathered in tasks); the result with its run ids (`mlflow_run_id`, and `model_run_id` when
    there is a model)."""
    from storage.tracking.train import record_train

    if result.model_dir is None:  # label-only: no figures and no network, so no torch to import
        result.mlflow_run_id = record_train(layout, config, result, config_path=config_path)
        return result
    from tasks.train_figures import train_artifacts

    artifacts = train_artifacts(result)
    run_id = record_train(layout, config, result, figures=artifacts.figures, tables=artifacts.tables,
                          model=artifacts.model, config_path=config_path)
    result.mlflow_run_id = run_id
    if result.model_dir:
        result.model_run_id = run_id
    return result


def train_and_record(config: PipelineConfig, layout: RootLayout, config_path: Path | None) -> TrainResult:
    """The train task, then its MLflow run (which writes its id into the model's spec)."""
    return record_training(layout, config, train_task(config, layout), config_path)


def trained_model(config: PipelineConfig, layout: RootLayout, config_path: Path | None) -> TrainResult:
    """The model this config trains on the store's latest version: the recorded one when it
    exists (same dataset version and train settings), else trained and recorded now."""
    from storage.model_store import RunFolder
    from tasks.train import result_key

    store = DatasetStore.open(layout.dataset_uri(config.name))
    run = RunFolder(layout.run_dir(config.name, result_key(store.version, config.train)))
    finished = run.finished_model()
    if finished is not None and finished[1].model_run_id:
        result, spec = finished
        log.info("using the trained model in %s (MLflow run %s)", run.path, spec.model_run_id)
        return result.model_copy(update={"model_run_id": spec.model_run_id, "mlflow_run_id": spec.model_run_id})
    return train_and_record(config, layout, config_path)


def cli_run(args: argparse.Namespace) -> TrainResult:
    return train_flow(config_path=str(Path(args.config).resolve()), root=str(args.root.resolve()))


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _mean_sd(stats: MeanSd | None, scale: float = 100.0, digits: int = 1) -> str:
    if stats is None or stats.mean is None:
        return "-"
    sd = f" +/- {scale * stats.sd:.{digits}f}" if stats.sd is not None else ""
    return f"{scale * stats.mean:.{digits}f}{sd}"


def model_table(result: TrainResult) -> list[str]:
    """Every model (annotator head, compared heads, baselines): test accuracy on the test items'
    gold, validation gold accuracy, the selection rule and the kept epoch (mean +/- sd and each
    seed's epoch over several seeds)."""
    names = list(result.metrics.models())
    label = {"model": f"{result.head} (saved)", "mv": "MV-trained", "ds": "DS-trained"}
    n_seeds = max(1, len(result.seeds))
    lines = [f"  {'model':<26} {'test acc %':>15} {'val gold %':>15} {'select':>7}  kept epoch"
             + (f" (seeds {', '.join(str(s.seed) for s in result.seeds)})" if n_seeds > 1 else "")]
    for name in names:
        stats = result.summary.get(name, {})
        if n_seeds > 1:
            epochs = ", ".join(str(s.metrics.models()[name].model_dump().get("best_epoch")) for s in result.seeds)
        else:
            epochs = str(result.metrics.models()[name].model_dump().get("best_epoch"))
        lines.append(f"  {label.get(name, name):<26} {_mean_sd(stats.get('test_accuracy')):>15} "
                     f"{_mean_sd(stats.get('val_gold_accuracy')):>15} {result.selection or '-':>7}  {epochs}")
    return lines


def cli_print(result: TrainResult) -> None:
    m = result.metrics
    print(f"dataset {result.dataset} version {result.version}")
    if result.head is None:
        print(f"  no model: {result.reason}")
        for method, agg in m.baselines().items():
            if isinstance(agg, AggregatorMetrics):
                print(f"  {method.upper()} consensus vs gold: {_pct(agg.consensus_accuracy)} "
                      f"({agg.n_gold} items with gold)")
        print(f"  MLflow run {result.mlflow_run_id}")
        return
    resumed = f", resumed from epoch {result.resumed_from_epoch}" if result.resumed_from_epoch else ""
    seeds = f"; seeds {[s.seed for s in result.seeds]}, the saved model is seed {result.seed}'s" \
        if len(result.seeds) > 1 else ""
    print(f"  {result.head} head on a {result.encoder} encoder, {result.device}, "
          f"{result.epochs} epochs (kept {result.best_epoch}){resumed}, {result.seconds or 0:.1f} s{seeds}")
    print(f"  split {result.split}: {result.n_train_frames} training, {result.n_val_frames} validation frames with "
          f"crowd labels, {result.n_val_gold_frames} with gold, {result.n_test_frames} test frames; "
          f"epoch kept by {SELECTION_WORDS.get(result.selection or '', result.selection)}")
    for line in model_table(result):
        print(line)
    print(f"  model {result.model_dir}")
    print(f"  MLflow run {result.mlflow_run_id}")


SELECTION_WORDS = {"gold": "consensus accuracy on the validation gold",
                   "crowd": "held-out crowd-label likelihood (after the warm-up)",
                   "last": "the last epoch of the fixed schedule"}
