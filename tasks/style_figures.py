"""Figures of the style explanations (`tasks.styles`): confusions, bout lags, quality, drift.

Every function takes the typed report and returns a Matplotlib Figure with named axes; the
analyze stage saves them next to its other figures (`tasks.figures.save`), and MLflow logs them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from storage.results.styles import Agreement, Bouts, Drift, Quality  # noqa: E402

MAX_PANELS = 24  # annotators in a confusion grid; more: one panel per cluster
FLAG_COLOURS = {"constant": "tab:orange", "near_random": "tab:red", "adversarial": "tab:purple"}


def _rates(confusion: np.ndarray) -> np.ndarray:
    rows = confusion.sum(axis=1, keepdims=True)
    return np.divide(confusion, rows, out=np.zeros_like(confusion, dtype=np.float64), where=rows > 0)


def confusion_grid(agreement: Agreement, clusters: Mapping[str, int]) -> Figure:
    """Row-normalised confusion against the reference: one panel per annotator (per cluster,
    members' counts summed, when there are more than `MAX_PANELS` annotators)."""
    panels: list[tuple[str, np.ndarray]]
    if len(agreement.annotators) <= MAX_PANELS:
        panels = [(f"{a.annotator}" + (f" (cluster {clusters[a.annotator]})" if a.annotator in clusters else ""),
                   np.asarray(a.confusion, np.int64)) for a in agreement.annotators]
    else:
        by_cluster: dict[int, np.ndarray] = {}
        for a in agreement.annotators:
            c = clusters.get(a.annotator, -1)
            by_cluster[c] = by_cluster.get(c, 0) + np.asarray(a.confusion, np.int64)
        panels = [(f"cluster {c}" if c >= 0 else "unclustered", m) for c, m in sorted(by_cluster.items())]
    n = len(panels)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    k = len(agreement.classes)
    side = float(np.clip(0.45 * k + 1.6, 2.6, 5.0))
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols + 1.5, side * rows + 0.8), squeeze=False,
                             layout="constrained", sharex=True, sharey=True)
    image = None
    for i, (ax, (title, matrix)) in enumerate(zip(axes.flat, panels, strict=False)):
        image = ax.imshow(_rates(matrix), vmin=0, vmax=1, cmap="viridis")
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(k), agreement.classes, rotation=90, fontsize=7)
        ax.set_yticks(range(k), agreement.classes, fontsize=7)
        if i % cols == 0:
            ax.set_ylabel(f"reference ({agreement.reference})", fontsize=8)
        if i >= n - cols:
            ax.set_xlabel("annotator's label", fontsize=8)
            ax.xaxis.set_tick_params(labelbottom=True)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="share of the reference class's frames")
    fig.suptitle(f"confusion against the {_reference_words(agreement.reference)}")
    return fig


def _reference_words(kind: str) -> str:
    return {"others": "consensus of the other annotators", "model": "model's consensus", "gold": "gold labels"}[kind]


def lag_boxes(bouts: Bouts, clusters: Mapping[str, int]) -> Figure:
    """Onset and offset lags per annotator (median and interquartile range), grouped by cluster."""
    order = sorted(bouts.annotators, key=lambda a: (clusters.get(a.annotator, -1), a.annotator))
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 0.35 * len(order) + 3) * 2, 4.5), squeeze=False)
    for ax, edge in zip(axes[0], ("onset_lag", "offset_lag"), strict=True):
        stats, face = [], []
        for a in order:
            spread = getattr(a.behaviour, edge) if a.behaviour is not None else None
            if spread is None or spread.median is None:
                stats.append({"med": np.nan, "q1": np.nan, "q3": np.nan, "whislo": np.nan, "whishi": np.nan,
                              "label": a.annotator})
            else:
                stats.append({"med": spread.median, "q1": spread.q1, "q3": spread.q3, "whislo": spread.q1,
                              "whishi": spread.q3, "label": a.annotator})
            face.append(colours(clusters.get(a.annotator, -1) % 10) if a.annotator in clusters else "0.7")
        boxes = ax.bxp(stats, showfliers=False, patch_artist=True, medianprops={"color": "k", "linewidth": 1.5})
        for patch, colour in zip(boxes["boxes"], face, strict=True):
            patch.set_facecolor(colour)
        ax.axhline(0, color="k", linewidth=0.8, linestyle="--")
        ax.tick_params(axis="x", labelrotation=90, labelsize=7)
        ax.set_xlabel("annotator (colour: cluster)")
        ax.set_ylabel(f"{edge.replace('_', ' ')} against the reference (frames; < 0 earlier)")
    edges = f"edges bordering {bouts.background}" if bouts.background else "every bout edge"
    fig.suptitle(f"bout onset and offset lags, median and IQR ({edges})")
    fig.tight_layout()
    return fig


def quality_scatter(quality: Quality) -> Figure:
    """Each annotator's agreement-based quality against how many labels it gave, flags coloured."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    xs = np.array([q.n_labels for q in quality.annotators], np.float64)
    ys = np.array([np.nan if q.agreement_score is None else q.agreement_score for q in quality.annotators])
    colour = [FLAG_COLOURS.get(q.flags[0], "0.4") if q.flags else "tab:blue" for q in quality.annotators]
    ax.scatter(np.maximum(xs, 1), ys, c=colour, s=18)
    for q, x, y in zip(quality.annotators, xs, ys, strict=True):
        if q.flags:
            ax.annotate(q.annotator, (max(x, 1), y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("labels given (log scale)")
    ax.set_ylabel("agreement-based quality score")
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=c, label=f) for f, c in FLAG_COLOURS.items()]
    ax.legend(handles=[plt.Line2D([], [], marker="o", linestyle="", color="tab:blue", label="not flagged"),
                       *handles], fontsize=7)
    ax.set_title("annotator quality against number of labels")
    fig.tight_layout()
    return fig


def drift_lines(drift: Drift) -> Figure:
    """Agreement with the reference per batch and along the sequences, one line per annotator."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), squeeze=False)
    for ax, attr, xlabel in ((axes[0][0], "by_batch", "dataset batch"),
                             (axes[0][1], "by_position", "position in the sequence")):
        for a in drift.annotators:
            bins = getattr(a, attr)
            if not bins:
                continue
            flagged = any(f.endswith(attr.split("_")[1]) for f in a.flags)
            ys = [np.nan if b.agreement is None else b.agreement for b in bins]
            ax.plot([b.name for b in bins], ys, marker="o", linewidth=2 if flagged else 0.8,
                    alpha=1.0 if flagged else 0.5, label=a.annotator if flagged else None)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("agreement with the reference")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, title="flagged")
    fig.suptitle("drift: agreement per batch and along the sequences (bold: flagged)")
    fig.tight_layout()
    return fig
