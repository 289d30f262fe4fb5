"""What a training run records in MLflow.

One run per training: the whole config as params; the dataset store as an input (digest = its
version); per-epoch metrics of the annotator model and of each baseline (`mv.*`, `ds.*`),
per-annotator validation accuracy (`val_accuracy.<annotator>`); the best epoch's metrics as
`final.*`; the model (`mlflow.pytorch.log_model` with a signature inferred from real windows);
the annotator embedding matrix as a table and a heatmap; CoNAL's confusion matrices; learning
curves and per-annotator accuracies as figures. A dataset without features gets a run with the
aggregators' figures and no model.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402

from storage.tracking import log_metrics, log_store_input, stage_run  # noqa: E402

log = logging.getLogger(__name__)

SCALARS = ("train_loss", "val_loss", "val_accuracy", "val_accuracy_annotator_mean", "consensus_accuracy",
           "val_gold_accuracy", "test_accuracy")


def metric_key(text: str) -> str:
    """A name MLflow accepts as (part of) a metric key."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", str(text))[:200]


def epoch_metrics(entry: Mapping[str, Any], main: str = "model") -> dict[str, float | None]:
    """One history entry as flat MLflow metrics: the model's unprefixed, baselines' prefixed."""
    out: dict[str, float | None] = {}
    for name, m in entry.items():
        if name == "epoch":
            continue
        prefix = "" if name == main else f"{name}."
        for key in SCALARS:
            out[prefix + key] = m.get(key)
        for ann, acc in (m.get("val_accuracy_per_annotator") or {}).items():
            out[f"{prefix}val_accuracy.{metric_key(ann)}"] = acc
    return out


def record_train(root: Path, config: Mapping[str, Any], summary: Mapping[str, Any],
                 config_path: Path | None = None) -> str:
    """One MLflow run for one training (or aggregation-only) run; returns its run id, which is
    also written into the model's spec (predict and probe read it from there)."""
    dataset = summary["dataset"]
    tags = {"annostyle.version": summary["version"], "annostyle.store": summary["store"],
            "annostyle.head": str(summary["head"]), "annostyle.device": str(summary["device"])}
    if summary.get("key"):
        tags["annostyle.train_key"] = summary["key"]
    if summary.get("reason"):
        tags["annostyle.no_model"] = summary["reason"]
    with stage_run(root, dataset, "train", config, tags) as run:
        log_store_input(summary["store"], dataset, summary["version"], context="train")
        if config_path is not None:
            mlflow.log_artifact(str(config_path), "config")
        if summary["head"] is None:
            _record_label_only(summary)
        else:
            _record_model(summary)
        mlflow.log_dict(json.loads(json.dumps(dict(summary), default=str)), "summary.json")
        if summary.get("model_dir"):
            from tasks.model import set_model_run_id

            set_model_run_id(Path(summary["model_dir"]), run.info.run_id)
        return run.info.run_id


def _record_label_only(summary: Mapping[str, Any]) -> None:
    metrics = summary["metrics"]
    for method in ("mv", "ds"):
        if method in metrics:
            log_metrics({f"{method}.consensus_accuracy": metrics[method]["consensus_accuracy"],
                         f"{method}.n_gold": metrics[method]["n_gold"]})
            agree = metrics[method]["agreement_per_annotator"]
            mlflow.log_table({"annotator": list(agree), "agreement": [agree[a] for a in agree]},
                             f"tables/{method}_agreement.json")


def _record_model(summary: Mapping[str, Any]) -> None:
    history = json.loads(Path(summary["history_path"]).read_text())
    for entry in history:
        log_metrics(epoch_metrics(entry), step=int(entry["epoch"]) + 1)
    final = {k: v for k, v in summary["metrics"].items() if k not in ("mv", "ds")}
    flat = epoch_metrics({"epoch": -1, "model": final, **{k: summary["metrics"][k] for k in ("mv", "ds")
                                                          if k in summary["metrics"]}})
    log_metrics({f"final.{k}": v for k, v in flat.items()})
    log_metrics({"epochs": summary["epochs"], "best_epoch": summary["best_epoch"], "seconds": summary["seconds"],
                 "train_frames_per_s": summary.get("train_frames_per_s")})

    from tasks.model import load_model

    model = load_model(Path(summary["model_dir"]))
    _log_pytorch_model(model, summary)
    names = model.annotators
    emb = model.annotator_embeddings
    table: dict[str, list[Any]] = {"annotator": names}
    for j in range(emb.shape[1]):
        table[f"e{j}"] = emb[:, j].tolist()
    mlflow.log_table(table, "tables/annotator_embeddings.json")
    mlflow.log_figure(embedding_figure(emb, names, model.head), "figures/annotator_embeddings.png")
    if model.head == "conal":
        g, local = model.net.head.confusions()
        mlflow.log_figure(confusion_figure(g.detach().cpu().numpy(), local.detach().cpu().numpy(), names,
                                           model.class_names), "figures/conal_confusions.png")
    mlflow.log_figure(learning_curves_figure(history), "figures/learning_curves.png")
    mlflow.log_figure(annotator_accuracy_figure(summary["metrics"], names), "figures/val_accuracy_per_annotator.png")
    plt.close("all")


def _log_pytorch_model(model: Any, summary: Mapping[str, Any]) -> None:
    """The network as an MLflow PyTorch model; its signature from real windows of the store."""
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    from storage.dataset_store import DatasetStore
    from tasks.loader import read_range

    store = DatasetStore.open(summary["store"], version=summary["version"])
    n = min(4, store.n_frames)
    windows = read_range(store, 0, n, model.context, 1)
    example = windows.x[:n]
    with torch.no_grad():
        output = model.net(torch.from_numpy(example)).numpy()
    signature = infer_signature(example, output)
    requirements = [f"torch=={torch.__version__.split('+')[0]}"]
    try:  # a self-contained torch.export graph (MLflow 3's default format)
        mlflow.pytorch.log_model(model.net, name="model", signature=signature, input_example=example,
                                 serialization_format="pt2", pip_requirements=requirements)
    except Exception as err:  # export is best effort; the pickled module always works
        log.warning("torch.export of the model failed (%s); logging it pickled instead", err)
        mlflow.pytorch.log_model(model.net, name="model", signature=signature, input_example=example,
                                 serialization_format="pickle", pip_requirements=requirements)


def embedding_figure(emb: np.ndarray, names: list[str], head: str) -> plt.Figure:
    """Heatmap of the annotator embedding matrix, annotators on the rows."""
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * emb.shape[1] + 2), max(3, 0.3 * len(names) + 1.5)))
    lim = float(np.abs(emb).max()) or 1.0
    im = ax.imshow(emb, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_yticks(range(len(names)), names, fontsize=7 if len(names) > 20 else 9)
    ax.set_xlabel("embedding dimension")
    ax.set_ylabel("annotator")
    ax.set_title(f"Learned annotator embeddings ({head})")
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig


def confusion_figure(g: np.ndarray, local: np.ndarray, names: list[str], classes: list[str],
                     max_annotators: int = 24) -> plt.Figure:
    """CoNAL's global confusion G and the first annotators' L_r (rows: true class, columns: label)."""
    shown = min(len(local), max_annotators)
    cols = min(6, shown + 1)
    rows = -(-(shown + 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.4 * rows), squeeze=False)
    mats = [("global G", g), *[(f"L: {names[r]}", local[r]) for r in range(shown)]]
    for ax in axes.flat:
        ax.axis("off")
    ticks = range(len(classes))
    short = [str(c)[:6] for c in classes]
    for ax, (title, m) in zip(axes.flat, mats, strict=False):
        ax.axis("on")
        ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
        ax.set_title(title, fontsize=8)
        ax.set_xticks(ticks, short, fontsize=6, rotation=90)
        ax.set_yticks(ticks, short, fontsize=6)
        ax.set_xlabel("label given", fontsize=7)
        ax.set_ylabel("true class", fontsize=7)
    fig.suptitle("CoNAL confusion matrices (row-normalised)")
    fig.tight_layout()
    return fig


def learning_curves_figure(history: list[dict[str, Any]]) -> plt.Figure:
    """Training and validation loss, and validation / gold accuracy, per epoch, for every model."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    names = sorted({k for e in history for k in e if k != "epoch"}, key=lambda n: (n != "model", n))
    for name in names:
        epochs = [e["epoch"] + 1 for e in history if name in e]
        rows = [e[name] for e in history if name in e]
        line = ax_loss.plot(epochs, [r["train_loss"] for r in rows], label=f"{name} train")[0]
        ax_loss.plot(epochs, [_nan(r["val_loss"]) for r in rows], "--", color=line.get_color(), label=f"{name} val")
        ax_acc.plot(epochs, [_nan(r["val_accuracy"]) for r in rows], color=line.get_color(),
                    label=f"{name} val (annotators)")
        if any(r["consensus_accuracy"] is not None for r in rows):
            ax_acc.plot(epochs, [_nan(r["consensus_accuracy"]) for r in rows], ":", color=line.get_color(),
                        label=f"{name} consensus vs gold")
    ax_loss.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def annotator_accuracy_figure(metrics: Mapping[str, Any], names: list[str]) -> plt.Figure:
    """Each annotator's validation accuracy: the annotator model beside the baselines."""
    models = [("model", metrics), *[(b, metrics[b]) for b in ("mv", "ds") if b in metrics]]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(names) + 2), 4))
    width = 0.8 / len(models)
    x = np.arange(len(names))
    for i, (label, m) in enumerate(models):
        per = m.get("val_accuracy_per_annotator") or {}
        ax.bar(x + i * width, [_nan(per.get(n)) for n in names], width, label=label)
    ax.set_xticks(x + 0.4 - width / 2, names, rotation=90 if len(names) > 12 else 0)
    ax.set(title="Validation accuracy against each annotator's own labels", xlabel="annotator",
           ylabel="accuracy", ylim=(0, 1))
    ax.legend()
    fig.tight_layout()
    return fig


def _nan(v: float | None) -> float:
    return float("nan") if v is None else float(v)
