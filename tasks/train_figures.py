"""The figures, tables and model example a training run is recorded with (`storage.tracking.train`).

`write_figures(result)` draws, at the end of the train stage, into the run folder's `figures/`:
the annotator embeddings, CoNAL's confusion matrices, the learning curves and the per-annotator
validation accuracies. `train_artifacts(result)` gathers what the record logs: those files, the
embedding table, and the trained model with a few windows of the store for its signature. The
tracking store only logs what it gets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from storage.dataset_store import DatasetStore  # noqa: E402
from storage.model_store import History, LoggedModel, RunFolder  # noqa: E402
from storage.results.train import EpochMetrics, TrainMetrics, TrainResult  # noqa: E402
from tasks.conal import ConalHead  # noqa: E402
from tasks.figures import save  # noqa: E402
from tasks.loader import read_range  # noqa: E402
from tasks.model import TrainedModel, load_model  # noqa: E402


@dataclass
class TrainArtifacts:
    """What `storage.tracking.train.record_train` logs beside the result: figure files and tables
    by artifact path, and the model (None for a label-only dataset)."""

    figures: dict[str, Path] = field(default_factory=dict)
    tables: dict[str, dict[str, list[str | float | None]]] = field(default_factory=dict)
    model: LoggedModel | None = None


def write_figures(result: TrainResult, model: TrainedModel | None = None) -> dict[str, Path]:
    """Draw a finished training's figures into its run folder; their files by artifact path."""
    if result.model_dir is None or result.checkpoint_dir is None:
        return {}
    model = model or load_model(Path(result.model_dir))
    folder = RunFolder(Path(result.checkpoint_dir))
    names = model.annotators
    drawn = {"annotator_embeddings.png": lambda: embedding_figure(model.annotator_embeddings, names, model.head)}
    head = model.net.head
    if isinstance(head, ConalHead):
        g, local = head.confusions()
        drawn["conal_confusions.png"] = lambda: confusion_figure(
            g.detach().cpu().numpy(), local.detach().cpu().numpy(), names, model.class_names)
    drawn["learning_curves.png"] = lambda: learning_curves_figure(folder.read_history())
    drawn["val_accuracy_per_annotator.png"] = lambda: annotator_accuracy_figure(result.metrics, names)
    return {f"figures/{name}": save(draw(), folder.figures_dir / name, crop=False) for name, draw in drawn.items()}


def train_artifacts(result: TrainResult) -> TrainArtifacts:
    """The figure files, tables and model example of a finished training (none without a
    model); figures the train stage did not leave (a run folder of an earlier version) are drawn."""
    if result.model_dir is None:
        return TrainArtifacts()
    model = load_model(Path(result.model_dir))
    emb = model.annotator_embeddings
    table: dict[str, list[str | float | None]] = {"annotator": list(model.annotators)}
    for j in range(emb.shape[1]):
        table[f"e{j}"] = [float(v) for v in emb[:, j]]
    folder = RunFolder(Path(result.checkpoint_dir)) if result.checkpoint_dir else None
    figures = ({f"figures/{p.name}": p for p in sorted(folder.figures_dir.glob("*.png"))}
               if folder is not None and folder.figures_dir.is_dir() else {})
    if not figures:
        figures = write_figures(result, model)
    return TrainArtifacts(figures, {"tables/annotator_embeddings.json": table}, logged_model(model, result))


def logged_model(model: TrainedModel, result: TrainResult) -> LoggedModel:
    """The network with a real example: windows of the first frames of the store it trained on."""
    store = DatasetStore.open(result.store, version=result.version)
    n = min(4, store.n_frames)
    example = read_range(store, 0, n, model.context, 1).x[:n]
    with torch.no_grad():
        output = model.net(torch.from_numpy(example)).numpy()
    return LoggedModel(model.net, example, output)


def embedding_figure(emb: np.ndarray, names: list[str], head: str) -> Figure:
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
                     max_annotators: int = 24) -> Figure:
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


def learning_curves_figure(history: History) -> Figure:
    """Training and validation loss, and validation / gold accuracy, per epoch, for every model."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    names = sorted({k for e in history for k in e}, key=lambda n: (n != "model", n))
    for name in names:
        epochs = [epoch + 1 for epoch, e in enumerate(history) if name in e]
        rows = [e[name] for e in history if name in e]
        line = ax_loss.plot(epochs, [_nan(r.train_loss) for r in rows], label=f"{name} train")[0]
        ax_loss.plot(epochs, [_nan(r.val_loss) for r in rows], "--", color=line.get_color(), label=f"{name} val")
        ax_acc.plot(epochs, [_nan(r.val_accuracy) for r in rows], color=line.get_color(),
                    label=f"{name} val (annotators)")
        if any(r.val_gold_accuracy is not None for r in rows):
            ax_acc.plot(epochs, [_nan(r.val_gold_accuracy) for r in rows], ":", color=line.get_color(),
                        label=f"{name} consensus vs validation gold")
    ax_loss.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def annotator_accuracy_figure(metrics: TrainMetrics, names: list[str]) -> Figure:
    """Each annotator's validation accuracy: the annotator model beside the baselines."""
    models: list[tuple[str, EpochMetrics]] = [
        ("model", metrics), *[(b, m) for b, m in metrics.baselines().items() if isinstance(m, EpochMetrics)]]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(names) + 2), 4))
    width = 0.8 / len(models)
    x = np.arange(len(names))
    for i, (label, m) in enumerate(models):
        per = m.val_accuracy_per_annotator
        ax.bar(x + i * width, [_nan(per.get(n)) for n in names], width, label=label)
    ax.set_xticks(x + 0.4 - width / 2, names, rotation=90 if len(names) > 12 else 0)
    ax.set(title="Validation accuracy against each annotator's own labels", xlabel="annotator",
           ylabel="accuracy", ylim=(0, 1))
    ax.legend()
    fig.tight_layout()
    return fig


def _nan(v: float | None) -> float:
    return float("nan") if v is None else float(v)
