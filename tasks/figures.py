"""Figures of an analysis and of a representation probe (Matplotlib on the Agg backend; every
function returns a Figure).

Sizes and font sizes follow the number of annotators, so that 50 names stay readable.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from scipy.cluster.hierarchy import dendrogram  # noqa: E402

from storage.results.probe import ProbeResult  # noqa: E402
from tasks.clustering import condensed  # noqa: E402


@contextmanager
def _quiet() -> Iterator[None]:
    """Seaborn 0.13 calls Colormap.set_bad, which Matplotlib 3.11 marks as pending deprecation."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The set_bad function", category=PendingDeprecationWarning)
        yield


def _font(n: int) -> float:
    return float(np.clip(360.0 / max(n, 1), 4.0, 10.0))


def _side(n: int) -> float:
    return float(np.clip(0.22 * n + 3.0, 5.0, 16.0))


def distance_heatmap(matrix: np.ndarray, annotators: Sequence[str], title: str,
                     order: Sequence[int] | None = None, label: str = "distance") -> Figure:
    """Heatmap of an annotator x annotator matrix, rows in `order` (e.g. the tree's leaves).

    Matplotlib's `imshow`, not seaborn's heatmap: seaborn draws the whole figure once more to
    see whether its tick labels overlap, which doubled the cost of 164 annotators' figure."""
    n = len(annotators)
    idx = np.arange(n) if order is None else np.asarray(order)
    names = [annotators[int(i)] for i in idx]
    side = _side(n)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    image = ax.imshow(np.ma.masked_invalid(matrix[np.ix_(idx, idx)]), cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label=label, fraction=0.046, pad=0.02)
    ax.set_xticks(np.arange(n), names, rotation=90)
    ax.set_yticks(np.arange(n), names)
    ax.tick_params(labelsize=_font(n), length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel("annotator")
    ax.set_ylabel("annotator")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def dendrograms(trees: Mapping[str, np.ndarray], annotators: Sequence[str],
                colors: Mapping[str, str] | None = None, ylabel: str = "merge height") -> Figure:
    """One dendrogram per tree, side by side (leaf names coloured by known group if given)."""
    n = len(annotators)
    fig, axes = plt.subplots(1, len(trees), figsize=(max(6.0, 0.18 * n + 4) * len(trees), 5.5), squeeze=False)
    palette = dict(zip(sorted(set((colors or {}).values())), sns.color_palette("tab10"), strict=False))
    for ax, (title, linkage_matrix) in zip(axes[0], trees.items(), strict=True):
        # with known groups the leaf names carry the colour; grey branches keep the two apart
        branch = {"link_color_func": lambda _: "0.35"} if colors else {"color_threshold": None}
        dendrogram(linkage_matrix, labels=list(annotators), ax=ax, leaf_rotation=90, leaf_font_size=_font(n),
                   **branch)
        ax.set_title(title)
        ax.set_xlabel("annotator")
        ax.set_ylabel(ylabel)
        if colors:
            for tick in ax.get_xticklabels():
                group = colors.get(tick.get_text())
                if group is not None:
                    tick.set_color(palette[group])
    fig.tight_layout()
    if colors:
        handles = [plt.Line2D([], [], color=c, marker="s", ls="", label=g) for g, c in palette.items()]
        fig.subplots_adjust(right=0.88)
        fig.legend(handles=handles, title="true group", loc="center right", fontsize=8)
    return fig


def clustermap(data: np.ndarray, row_names: Sequence[str], title: str, method: str = "ward",
               square_distances: bool = False, col_names: Sequence[str] | None = None,
               value_label: str = "value") -> Figure:
    """Seaborn clustermap: rows (and, for a square distance matrix, columns) ordered by a tree.

    With `square_distances`, `data` is a distance matrix and both axes use its tree; otherwise
    rows are items (e.g. annotator embeddings) clustered with euclidean distances.
    """
    from scipy.cluster.hierarchy import linkage

    n = len(row_names)
    side = _side(n)
    if square_distances:
        z = linkage(condensed(data), method=method)
        with _quiet():
            grid = sns.clustermap(data, row_linkage=z, col_linkage=z, xticklabels=row_names, yticklabels=row_names,
                                  cmap="viridis", figsize=(side + 2, side + 2), dendrogram_ratio=0.15,
                                  cbar_pos=(0.02, 0.86, 0.03, 0.12))
    else:
        with _quiet():
            grid = sns.clustermap(data, method=method, metric="euclidean", col_cluster=data.shape[1] > 1,
                                  yticklabels=row_names, xticklabels=col_names or True, cmap="vlag", center=0.0,
                                  figsize=(max(6.0, 0.25 * data.shape[1] + 4), side + 2), dendrogram_ratio=0.15,
                                  cbar_pos=(0.02, 0.86, 0.03, 0.12))
    grid.ax_heatmap.tick_params(labelsize=_font(n))
    grid.ax_heatmap.set_ylabel("annotator")
    grid.ax_heatmap.set_xlabel("annotator" if square_distances else "embedding dimension")
    grid.ax_cbar.set_title(value_label, fontsize=8)
    grid.figure.suptitle(title, y=1.02)
    return grid.figure


def projection_grid(coords: Mapping[str, np.ndarray], labels: np.ndarray, class_names: Sequence[str],
                    title: str) -> Figure:
    """Scatter plots of every projection, points coloured by label."""
    names = sorted(coords)
    cols = min(2, len(names)) or 1
    rows = -(-len(names) // cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.8 * rows), squeeze=False)
    palette = sns.color_palette("tab10", max(len(class_names), 1))
    for ax, name in zip(axes.flat, names, strict=False):
        xy = coords[name]
        for c, cname in enumerate(class_names):
            sel = labels == c
            if sel.any():
                ax.scatter(xy[sel, 0], xy[sel, 1], s=4, alpha=0.6, color=palette[c % len(palette)], label=cname)
        shown = int(np.isfinite(xy[:, 0]).sum())  # t-SNE and UMAP run on a sub-sample (NaN elsewhere)
        ax.set_title(f"{name.replace('_', ' ')} ({shown} frames)")
        ax.set_xlabel("dimension 1")
        ax.set_ylabel("dimension 2")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(markerscale=3, fontsize=8, title="label")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def rsm_figure(matrix: np.ndarray, labels: np.ndarray, class_names: Sequence[str], title: str) -> Figure:
    """The similarity matrix with label boundaries marked and labelled."""
    fig, ax = plt.subplots(figsize=(7, 6))
    image = ax.imshow(matrix, cmap="magma", vmin=-1, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="cosine similarity")
    bounds = np.flatnonzero(np.diff(labels)) + 0.5
    for b in bounds:
        ax.axhline(b, color="white", lw=0.6)
        ax.axvline(b, color="white", lw=0.6)
    edges = np.concatenate([[0], bounds + 0.5, [len(labels)]])
    mids = (edges[:-1] + edges[1:]) / 2
    names = [class_names[int(labels[int(e)])] for e in edges[:-1]]
    ax.set_xticks(mids, names, rotation=45, ha="right")
    ax.set_yticks(mids, names)
    ax.set_xlabel("frame (sorted by label)")
    ax.set_ylabel("frame (sorted by label)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def probe_bars(result: ProbeResult) -> Figure:
    """Probe accuracy (chance dashed) and MI lower bound (H(Y) dashed), encoders x targets, with
    the bootstrap intervals."""
    encoders, targets, results = result.encoders, result.targets, result.results
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 2.2 * len(targets) + 4), 4.2))
    width = 0.8 / len(encoders)
    x = np.arange(len(targets))
    colours = sns.color_palette("colorblind", len(encoders))
    for ax, key, limit, label in ((axes[0], "accuracy", result.chance, "probe accuracy (held-out)"),
                                  (axes[1], "mutual_information", result.entropy, "I(Z;Y) lower bound, nats")):
        for i, enc in enumerate(encoders):
            vals = [getattr(results[enc][t], key) for t in targets]
            spans = [getattr(results[enc][t].interval, key) for t in targets]
            err = None
            if all(s is not None for s in spans):
                lo, hi = np.array(spans).T
                err = np.maximum([np.array(vals) - lo, hi - np.array(vals)], 0)
            ax.bar(x + (i - (len(encoders) - 1) / 2) * width, vals, width, yerr=err, capsize=2, label=enc,
                   color=colours[i])
        for j, t in enumerate(targets):
            ax.hlines(limit[t], j - 0.45, j + 0.45, colors="k", linestyles="--", linewidth=1)
        ax.set_xticks(x, targets)
        ax.set_ylabel(label)
        ax.axhline(0, color="grey", linewidth=0.5)
    axes[0].set_title("dashed: chance (most frequent class)")
    axes[1].set_title("dashed: H(Y) of the held-out labels")
    axes[1].legend(fontsize=8, loc="upper right")
    fig.suptitle(f"{result.dataset}: linear probes on frozen embeddings")
    fig.tight_layout()
    return fig


def few_shot_curves(result: ProbeResult) -> Figure:
    """Probe accuracy against the share of training labels, one line per encoder, per target."""
    targets = [t for t in result.targets if t != "shuffled"] or result.targets
    fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 3.8), squeeze=False)
    for ax, t in zip(axes[0], targets, strict=True):
        for enc in result.encoders:
            curve = result.results[enc][t].few_shot
            pts = sorted((float(f), v) for f, v in curve.items() if v is not None)
            ax.plot([100 * p[0] for p in pts], [p[1] for p in pts], marker="o", label=enc)
        ax.axhline(result.chance[t], color="k", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("% of training labels")
        ax.set_ylabel("probe accuracy")
        ax.set_title(t)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{result.dataset}: few-shot linear probes (dashed: chance)")
    fig.tight_layout()
    return fig


def loss_curve(epochs: Sequence[int], losses: Sequence[float], chance: float | None, title: str) -> Figure:
    """A training loss per (0-based) epoch, with the loss of a model that knows nothing (dashed)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot([e + 1 for e in epochs], losses, marker="o")
    if chance is not None:
        ax.axhline(chance, color="k", linestyle="--", linewidth=1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def save(fig: Figure, path: Path, dpi: int = 110, crop: bool = True) -> Path:
    """Write the figure as PNG. `crop` fits the image to what is drawn (also a title above the
    axes, as the clustermaps have), at the price of a second draw; a figure already laid out by
    `tight_layout` needs none (40% of an analysis's figure time on the demo)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight" if crop else None)
    plt.close(fig)
    return path
