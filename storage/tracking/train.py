"""What a training run records in MLflow.

One run per training: the whole config as params; the dataset store as an input (digest = its
version); per-epoch metrics of the annotator model and of each baseline (`mv.*`, `ds.*`),
per-annotator validation accuracy (`val_accuracy.<annotator>`); the best epoch's metrics as
`final.*`; the model (`mlflow.pytorch.log_model` as a torch.export graph, never a pickle, with a
signature inferred from real windows); the tables and figures `tasks.train_figures` made
(annotator embeddings, CoNAL's confusion matrices, learning curves, per-annotator accuracies). A
dataset without features gets a run with the aggregators' metrics and tables and no model. Nothing here loads, reads or draws.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow

from configs.schema import PipelineConfig
from storage.layout import RootLayout
from storage.results.train import AggregatorMetrics, EpochMetrics, TrainMetrics, TrainResult
from storage.tracking import log_metrics, log_store_input, stage_run

if TYPE_CHECKING:  # torch loads only when a model is logged (a label-only run has none)
    from storage.model_store import LoggedModel

SCALARS = ("train_loss", "val_loss", "val_accuracy", "val_accuracy_annotator_mean", "val_gold_accuracy",
           "test_accuracy")

Table = Mapping[str, Sequence[str | float | None]]
"""A table as MLflow logs it: column name -> values."""


def metric_key(text: str) -> str:
    """A name MLflow accepts as (part of) a metric key."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", str(text))[:200]


def epoch_metrics(models: Mapping[str, EpochMetrics], main: str = "model") -> dict[str, float | None]:
    """One epoch's metrics as flat MLflow metrics: the model's unprefixed, baselines' prefixed."""
    out: dict[str, float | None] = {}
    for name, m in models.items():
        prefix = "" if name == main else f"{name}."
        for key in SCALARS:
            out[prefix + key] = getattr(m, key)
        for ann, acc in m.val_accuracy_per_annotator.items():
            out[f"{prefix}val_accuracy.{metric_key(ann)}"] = acc
    return out


def record_train(layout: RootLayout, config: PipelineConfig, result: TrainResult, *,
                 figures: Mapping[str, Path] | None = None, tables: Mapping[str, Table] | None = None,
                 model: LoggedModel | None = None, config_path: Path | None = None) -> str:
    """One MLflow run for one training (or aggregation-only) run; returns its run id, which is
    also written into the model's spec (predict and probe read it from there).

    `figures` (PNG files) and `tables` are keyed by their artifact path; `model` is the network to log.
    """
    tags = {"annostyle.version": result.version, "annostyle.store": result.store,
            "annostyle.head": str(result.head), "annostyle.device": str(result.device)}
    if result.key:
        tags["annostyle.train_key"] = result.key
    if result.reason:
        tags["annostyle.no_model"] = result.reason
    params = config.model_dump(mode="json")  # JSON boundary: the config as MLflow params
    with stage_run(layout, result.dataset, "train", params, tags) as run:
        log_store_input(result.store, result.dataset, result.version, context="train")
        if config_path is not None:
            mlflow.log_artifact(str(config_path), "config")
        if result.head is None:
            _record_label_only(result)
        else:
            _record_model(result)
            _record_seed_runs(layout, result)
        if model is not None:
            _log_pytorch_model(model, f"head {result.head}, run folder {result.model_dir}")
        for path, table in (tables or {}).items():
            mlflow.log_table(dict(table), path)
        for artifact, file in (figures or {}).items():
            mlflow.log_artifact(str(file), str(Path(artifact).parent))
        mlflow.log_dict(result.to_json(), "summary.json")
        if result.model_dir:
            from storage.model_store import set_model_run_id

            set_model_run_id(Path(result.model_dir), run.info.run_id)
        return str(run.info.run_id)


def _record_label_only(result: TrainResult) -> None:
    for method, m in result.metrics.baselines().items():
        if isinstance(m, AggregatorMetrics):
            log_metrics({f"{method}.consensus_accuracy": m.consensus_accuracy, f"{method}.n_gold": m.n_gold})
            agree = m.agreement_per_annotator
            mlflow.log_table({"annotator": list(agree), "agreement": [agree[a] for a in agree]},
                             f"tables/{method}_agreement.json")


def _record_model(result: TrainResult) -> None:
    """The saved seed's curves and kept-epoch metrics (`final.*`), the mean and sd over the seeds
    (`mean.<model>.<metric>`, `sd.<model>.<metric>`)."""
    _record_seed(result.checkpoint_dir, result.metrics)
    log_metrics({"epochs": result.epochs, "best_epoch": result.best_epoch, "seconds": result.seconds,
                 "train_frames_per_s": result.train_frames_per_s})
    for model, stats in result.summary.items():
        for key, value in stats.items():
            log_metrics({f"mean.{model}.{key}": value.mean, f"sd.{model}.{key}": value.sd})
    mlflow.set_tags({"annostyle.selection": str(result.selection), "annostyle.split": str(result.split),
                     "annostyle.seed": str(result.seed)})


def _record_seed(checkpoint_dir: str | None, metrics: TrainMetrics) -> None:
    """One seed's per-epoch curves (from its history) and kept-epoch metrics as `final.*`."""
    from storage.model_store import RunFolder

    if checkpoint_dir:
        for epoch, models in enumerate(RunFolder(Path(checkpoint_dir)).read_history()):
            log_metrics(epoch_metrics(models), step=epoch + 1)
    flat = epoch_metrics(metrics.models())
    log_metrics({f"final.{k}": v for k, v in flat.items()})
    log_metrics({f"final.{name}.best_epoch" if name != "model" else "final.best_epoch":
                 getattr(m, "best_epoch", None) for name, m in metrics.models().items()})


def _record_seed_runs(layout: RootLayout, result: TrainResult) -> None:
    """A nested run per seed (several seeds only), with its curves and kept-epoch metrics."""
    if len(result.seeds) < 2:
        return
    for seed in result.seeds:
        tags = {"annostyle.seed": str(seed.seed), "annostyle.train_key": seed.key,
                "annostyle.saved": str(seed.seed == result.seed).lower()}
        with stage_run(layout, result.dataset, f"train-seed{seed.seed}", {"train.seed": seed.seed}, tags):
            _record_seed(seed.checkpoint_dir, seed.metrics)
            log_metrics({"epochs": seed.epochs, "best_epoch": seed.best_epoch, "seconds": seed.seconds})


def _log_pytorch_model(model: LoggedModel, which: str) -> None:
    """The network as an MLflow PyTorch model (a self-contained torch.export graph, MLflow 3's
    default format), its signature inferred from the example; `which` names it in an error.

    A network that does not export is an error: it is never logged pickled instead (loading a
    pickle runs whatever code it names).
    """
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    signature = infer_signature(model.example, model.output)
    requirements = [f"torch=={torch.__version__.split('+')[0]}"]
    try:
        mlflow.pytorch.log_model(model.net, name="model", signature=signature, input_example=model.example,
                                 serialization_format="pt2", pip_requirements=requirements)
    except Exception as err:
        reason = str(err).strip().splitlines()[0][:500] if str(err).strip() else type(err).__name__
        raise RuntimeError(f"the {type(model.net).__name__} network ({which}) cannot be exported with "
                           f"torch.export, so it is not logged: {type(err).__name__}: {reason}") from err
