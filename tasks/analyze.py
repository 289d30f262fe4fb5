"""One analysis of a dataset: annotator distances, trees, the embedding comparison, item views.

With a prediction store (`RootLayout.prediction_uri`), distances come from the predicted
probabilities (tasks.distances) and the tree is compared with the tree of the learned
annotator embeddings; without one (label-only data, or no model yet), distances come from the
labels (tasks.label_distances). Tables and figures go to
`RootLayout.analysis_dir` (replaced
on every run; MLflow keeps each run's copy); the return value is an `AnalysisResult`
(also written as `summary.json` there).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import ValidationError
from threadpoolctl import threadpool_limits

from configs.analyze import AnalyzeConfig
from configs.schema import PipelineConfig
from errors import InputError
from storage.dataset_store import DatasetStore
from storage.files import atomic_write_bytes
from storage.layout import RootLayout
from storage.prediction_store import PredictionStore
from storage.results.analyze import (
    AnalysisResult,
    AriVsTruth,
    Clusters,
    EmbeddingTree,
    ItemLevelSummary,
    LabelCounts,
    PartialSums,
    PredictionStoreRef,
    StoreRef,
    Stores,
)
from storage.results.styles import StylesReport, card_lines
from tasks import clustering, figures
from tasks.label_distances import label_distances, store_pair_counts

log = logging.getLogger(__name__)
SUMMARY = "summary.json"


def analyze(config: PipelineConfig, layout: RootLayout, scheduler: str | None = None) -> AnalysisResult:
    """Analyse the config's dataset; `scheduler` overrides `analyze.scheduler`."""
    t0 = time.perf_counter()
    cfg = config.analyze
    data_uri = layout.dataset_uri(config.name)
    if not DatasetStore.exists(data_uri):
        raise InputError(data_uri, None, config.name, "no dataset store (run `annostyle ingest` first)")
    dataset = DatasetStore.open(data_uri)
    out = layout.analysis_dir(config.name)
    shutil.rmtree(out, ignore_errors=True)
    (out / "figures").mkdir(parents=True)
    pred_uri = layout.prediction_uri(config.name)
    truth = (dataset.meta.get("truth") or {}).get("style_groups")
    address = scheduler or cfg.scheduler
    with threadpool_limits(limits=1):  # small matrices: thread pools only cost here (see tasks.projections)
        if PredictionStore.exists(pred_uri):
            log.info("analysing %s from its prediction store %s", config.name, pred_uri)
            result = analyze_predictions(config.name, PredictionStore.open(pred_uri, mode="r+"), dataset, cfg,
                                         out, truth, address)
        else:
            log.info("analysing %s from its labels (no prediction store at %s)", config.name, pred_uri)
            result = analyze_labels(config.name, dataset, cfg, out, truth)
        if cfg.styles.enabled:
            result.styles = explain_styles(dataset, cfg, result, out, pred_uri)
    result.seconds = round(time.perf_counter() - t0, 3)
    atomic_write_bytes(out / SUMMARY, json.dumps(result.to_json(), indent=1).encode())
    return result


def latest_analysis(layout: RootLayout, name: str) -> AnalysisResult | None:
    """The last analysis of a dataset (its `summary.json`); None if there is none, or if it was
    written in a format this version does not read (then it counts as not analysed)."""
    path = layout.analysis_dir(name) / SUMMARY
    if not path.is_file():
        return None
    try:
        return AnalysisResult.model_validate_json(path.read_text())
    except ValidationError as err:
        log.warning("ignoring the analysis summary %s: %s", path, err)
        return None


def analysed_version(layout: RootLayout, name: str) -> str | None:
    """The dataset version the latest analysis was made from (None if there is none)."""
    latest = latest_analysis(layout, name)
    return latest.stores.dataset.version if latest else None


# --------------------------------------------------------------------------- predictions
def analyze_predictions(name: str, store: PredictionStore, dataset: DatasetStore, cfg: AnalyzeConfig, out: Path,
                        truth: dict[str, str] | None, address: str | None) -> AnalysisResult:
    """Prediction-based distances, the trees, the embedding tree and the item-level views."""
    from tasks.distances import dask_scheduler, describe_scheduler, store_distances  # Dask: predictions only

    if not store.complete:
        raise InputError(store.uri, "written", store.missing_ranges()[:3],
                         "prediction store is incomplete (rerun `annostyle predict` to resume it)")
    warnings: list[str] = []
    if store.dataset_version != dataset.version:
        warnings.append(f"predictions were made for dataset version {store.dataset_version}; "
                        f"the store is at {dataset.version}")
    annotators = store.annotators
    with dask_scheduler(address) as compute_kwargs:
        dist = store_distances(store, cfg.metric, compute_kwargs, cfg.read_chunk_frames)
    trees = _trees(dist.matrix, annotators, cfg, truth, out, warnings,
                   f"{cfg.metric} distance of predicted probabilities", euclidean=cfg.metric == "euclidean")

    table = store.annotator_embeddings()
    primary = cfg.linkage[0]
    embeddings = None
    if not np.any(table):
        warnings.append("the store holds no annotator embeddings: no embedding tree")
    else:
        emb_tree = clustering.embedding_tree(table, primary)
        embeddings = EmbeddingTree(linkage_method=primary, linkage=emb_tree.tolist(),
                                   clusters=clustering.clusters_by_k(emb_tree, annotators, cfg.ks),
                                   comparison=clustering.compare_trees(trees.trees[primary], emb_tree, annotators,
                                                                       cfg.ks))
        if trees.ari_vs_truth and truth:
            trees.ari_vs_truth.embeddings = clustering.ari_vs_truth(emb_tree, annotators, truth, cfg.ks)
        emb_dist = clustering.embedding_distances(table)
        _write_matrix(out / "embedding_distances.csv", emb_dist, annotators)
        (out / "linkage_embeddings.json").write_text(json.dumps(emb_tree.tolist()))
        if cfg.figures:
            figures.save(figures.dendrograms({f"predictions ({cfg.metric}, {primary})": trees.trees[primary],
                                              f"annotator embeddings (euclidean, {primary})": emb_tree},
                                             annotators, truth), out / "figures" / "dendrograms.png", crop=False)
            figures.save(figures.clustermap(table, annotators, "learned annotator embeddings", primary,
                                            value_label="weight"),
                         out / "figures" / "embedding_clustermap.png")
    item_level = _item_level(store, dataset, cfg, out) if cfg.projections and store.n_frames >= 50 else None
    stores = Stores(dataset=StoreRef(uri=dataset.uri, version=dataset.version),
                    predictions=PredictionStoreRef(uri=store.uri, version=store.version,
                                                   model_run_id=store.model_run_id,
                                                   dataset_version=store.dataset_version))
    result = trees.result(name, "predictions", cfg.metric, dist.report(), stores, warnings, out)
    result.scheduler = describe_scheduler(address)
    result.embeddings = embeddings
    result.cophenetic_correlation = embeddings.comparison.cophenetic_correlation if embeddings else None
    result.item_level = item_level
    return result


def _item_level(store: PredictionStore, dataset: DatasetStore, cfg: AnalyzeConfig, out: Path) -> ItemLevelSummary:
    from tasks.projections import LabelSource, Projection, item_level, sample_frames

    frames = sample_frames(store.n_frames, store.chunk_frames, cfg.projection_sample, cfg.seed)
    gold = _gold_at(dataset, frames, store.chunk_frames)
    source: LabelSource
    if (gold >= 0).mean() >= 0.5:
        keep = gold >= 0
        frames, labels, source = frames[keep], gold[keep].astype(np.int64), "gold"
    else:
        consensus = store.consensus.get_orthogonal_selection((frames,))
        labels, source = np.argmax(consensus, axis=1).astype(np.int64), "consensus"
    embeddings = np.asarray(store.embeddings.get_orthogonal_selection((frames,)))
    methods = [Projection("pca"), *([Projection("tsne", cfg.tsne_sample)] if cfg.tsne else []),
               *([Projection("umap", cfg.umap_sample)] if cfg.umap else [])]
    result = item_level(embeddings, labels, frames, source, methods, cfg.rsm_sample, cfg.seed)
    names = store.class_names
    if cfg.figures:
        figures.save(figures.projection_grid(result.coords, labels, names,
                                             f"encoder embeddings of {len(frames)} frames, coloured by {source}"),
                     out / "figures" / "projections.png", crop=False)
        assert result.rsm is not None and result.rsm_labels is not None  # item_level always makes them
        figures.save(figures.rsm_figure(result.rsm, result.rsm_labels, names,
                                        f"cosine similarity of {len(result.rsm_labels)} frames, sorted by {source}"),
                     out / "figures" / "rsm.png", crop=False)
    columns = {"frame": frames, "label": labels} | {f"{k}_{i}": v[:, i] for k, v in result.coords.items() for i in (0, 1)}
    _write_columns(out / "projections.csv", columns)
    return result.report()


def _gold_at(dataset: DatasetStore, frames: np.ndarray, chunk: int) -> np.ndarray:
    """Gold labels of sorted frame indices, reading only the chunks they fall in."""
    gold = np.full(len(frames), -1, np.int64)
    if not dataset.n_frames:
        return gold
    for c in np.unique(frames // chunk):
        start = int(c) * chunk
        sel = (frames >= start) & (frames < start + chunk) & (frames < dataset.n_frames)
        if sel.any():
            block = dataset.read_gold(start, start + chunk)
            gold[sel] = block[frames[sel] - start]
    return gold


# -------------------------------------------------------------------------------- labels
def analyze_labels(name: str, dataset: DatasetStore, cfg: AnalyzeConfig, out: Path,
                   truth: dict[str, str] | None) -> AnalysisResult:
    """Label-based distances (agreement or kappa over shared frames) and their trees."""
    annotators = dataset.annotators
    if len(annotators) < 2:
        raise InputError(dataset.uri, "annotators", len(annotators), "clustering needs at least two annotators")
    t0 = time.perf_counter()
    counts = store_pair_counts(dataset)
    dist = label_distances(counts, cfg.label_distance, cfg.min_overlap, cfg.impute)
    seconds = time.perf_counter() - t0
    warnings: list[str] = []
    report = dist.report(annotators)
    if report.n_low_overlap_pairs:
        warnings.append(f"{report.n_low_overlap_pairs} of {report.n_pairs} annotator pairs share fewer than "
                        f"{cfg.min_overlap} labelled items; their distance is imputed ({cfg.impute} = "
                        f"{report.imputed_value:.3f})")
    label = "1 - Cohen's kappa" if cfg.label_distance == "kappa" else "disagreement rate"
    trees = _trees(dist.matrix, annotators, cfg, truth, out, warnings, f"{label} (labels)", euclidean=False)
    _write_matrix(out / "overlap.csv", dist.overlap, annotators)
    _write_matrix(out / "kappa.csv", dist.kappa, annotators)
    _write_matrix(out / "disagreement.csv", dist.disagreement, annotators)
    _write_columns(out / "low_overlap_pairs.csv", {
        "annotator_a": [p[0] for p in report.low_overlap_pairs],
        "annotator_b": [p[1] for p in report.low_overlap_pairs],
        "overlap": [p[2] for p in report.low_overlap_pairs]})
    if cfg.figures:
        shown = {f"labels ({cfg.label_distance}, {m})": trees.trees[m] for m in cfg.linkage[:2]}
        figures.save(figures.dendrograms(shown, annotators, truth), out / "figures" / "dendrograms.png", crop=False)
        figures.save(figures.clustermap(dist.matrix, annotators, f"{label}, annotators ordered by "
                                        f"{cfg.linkage[0]} linkage", cfg.linkage[0], square_distances=True,
                                        value_label=cfg.label_distance),
                     out / "figures" / "distance_clustermap.png")
        figures.save(figures.distance_heatmap(np.log10(1 + dist.overlap), annotators,
                                              "shared labelled items per pair", label="log10(1 + items)"),
                     out / "figures" / "overlap_heatmap.png", crop=False)
    result = trees.result(name, "labels", cfg.label_distance,
                          LabelCounts(seconds=round(seconds, 3), n_frames=dataset.n_frames),
                          Stores(dataset=StoreRef(uri=dataset.uri, version=dataset.version), predictions=None),
                          warnings, out)
    result.overlap = report
    return result


# -------------------------------------------------------------------------------- styles
def explain_styles(dataset: DatasetStore, cfg: AnalyzeConfig, result: AnalysisResult, out: Path,
                   pred_uri: str) -> StylesReport:
    """The style report (tasks.styles) of the analysed annotators, with its table and figures."""
    from tasks import style_figures
    from tasks.styles import explain

    model_track = None
    if cfg.styles.reference == "model" and PredictionStore.exists(pred_uri):
        consensus = np.asarray(PredictionStore.open(pred_uri).consensus[: dataset.n_frames])
        model_track = np.argmax(consensus, axis=1).astype(np.int64)
    matrix = np.asarray(result.distance_matrix, dtype=np.float64)  # None (undefined) -> nan
    report = explain(dataset, cfg.styles, matrix, result.clusters, model_track)
    _write_columns(out / "styles_annotators.csv", report.annotator_table())
    if cfg.figures:
        t0 = time.perf_counter()
        figures.save(style_figures.confusion_grid(report.agreement, report.clusters),
                     out / "figures" / "style_confusions.png", crop=False)
        if report.quality:
            figures.save(style_figures.quality_scatter(report.quality), out / "figures" / "style_quality.png",
                         crop=False)
        if report.bouts:
            figures.save(style_figures.lag_boxes(report.bouts, report.clusters), out / "figures" / "style_lags.png",
                         crop=False)
        if report.drift:
            figures.save(style_figures.drift_lines(report.drift), out / "figures" / "style_drift.png", crop=False)
        report.seconds["figures"] = round(time.perf_counter() - t0, 4)
    atomic_write_bytes(out / "styles.json", json.dumps(report.model_dump(mode="json"), indent=1).encode())
    return report


# -------------------------------------------------------------------------------- shared
@dataclass
class _Trees:
    """The trees of every linkage method over one distance matrix, their cuts, fit and ARI."""

    annotators: list[str]
    matrix: np.ndarray
    primary: str  # the linkage method whose cuts are the reported clusters
    trees: dict[str, np.ndarray]
    by_method: dict[str, Clusters]
    tree_fit: dict[str, float]
    ari_vs_truth: AriVsTruth | None

    def result(self, name: str, method: Literal["predictions", "labels"], metric: str,
               distances: PartialSums | LabelCounts, stores: Stores, warnings: list[str],
               out: Path) -> AnalysisResult:
        """The analysis result these trees give (`seconds` is set by `analyze`)."""
        return AnalysisResult(
            dataset=name, method=method, metric=metric, annotators=self.annotators,
            distance_matrix=self.matrix.tolist(), linkage_method=self.primary,
            linkage=self.trees[self.primary].tolist(), clusters=self.by_method[self.primary],
            clusters_by_method=self.by_method, tree_fit=self.tree_fit, ari_vs_truth=self.ari_vs_truth,
            distances=distances, stores=stores, warnings=warnings, outputs=str(out), seconds=0.0)


def _trees(matrix: np.ndarray, annotators: list[str], cfg: AnalyzeConfig, truth: dict[str, str] | None,
           out: Path, warnings: list[str], title: str, euclidean: bool) -> _Trees:
    """Trees of every linkage method, their clusters and fit, ARI vs truth, tables and the heatmap."""
    primary = cfg.linkage[0]
    trees: dict[str, np.ndarray] = {m: clustering.tree(matrix, m) for m in cfg.linkage}
    if "ward" in trees and not euclidean:
        warnings.append("ward linkage assumes euclidean distances; its merge heights are not variances here")
    by_method = {m: clustering.clusters_by_k(z, annotators, cfg.ks) for m, z in trees.items()}
    ari = None
    if truth:
        ari = AriVsTruth(distances=clustering.ari_vs_truth(trees[primary], annotators, truth, cfg.ks),
                         embeddings=None, truth={a: truth.get(a) for a in annotators})
    _write_matrix(out / "distance_matrix.csv", matrix, annotators)
    for m, z in trees.items():
        (out / f"linkage_{m}.json").write_text(json.dumps(z.tolist()))
    (out / "clusters.json").write_text(json.dumps(by_method, indent=1))
    if cfg.figures:
        leaves = _leaves(trees[primary])
        figures.save(figures.distance_heatmap(matrix, annotators, f"{title}; rows in {primary} tree order", leaves),
                     out / "figures" / "distance_heatmap.png", crop=False)
    return _Trees(annotators, matrix, primary, trees, by_method,
                  {m: clustering.tree_fit(z, matrix) for m, z in trees.items()}, ari)


def _leaves(linkage_matrix: np.ndarray) -> list[int]:
    from scipy.cluster.hierarchy import leaves_list

    return leaves_list(linkage_matrix).tolist()


def _write_matrix(path: Path, matrix: np.ndarray, names: list[str]) -> None:
    lines = ["annotator," + ",".join(_csv(n) for n in names)]
    for name, row in zip(names, matrix, strict=True):
        lines.append(_csv(name) + "," + ",".join("" if not np.isfinite(v) else repr(float(v)) for v in row))
    path.write_text("\n".join(lines) + "\n")


def _write_columns(path: Path, columns: Mapping[str, np.ndarray | Sequence[str | int | float]]) -> None:
    names = list(columns)
    rows = zip(*[list(np.asarray(columns[n]).tolist()) for n in names], strict=True)
    path.write_text("\n".join([",".join(names), *(",".join(_csv(v) for v in row) for row in rows)]) + "\n")


def _csv(value: object) -> str:
    if isinstance(value, float) and not np.isfinite(value):
        return ""  # e.g. a frame outside a projection's sub-sample
    text = str(value)
    return f'"{text.replace(chr(34), chr(34) * 2)}"' if any(c in text for c in ',"\n') else text


# ------------------------------------------------------------------------------ markdown
def summary_markdown(result: AnalysisResult, run_link: str | None = None) -> str:
    """A short Markdown report of the clusters (for the Prefect artifact)."""
    lines = [f"# Annotator styles: {result.dataset}", "",
             f"Distances from **{result.method}** ({result.metric}), "
             f"{len(result.annotators)} annotators, {result.linkage_method} linkage.", ""]
    for k, assignment in result.clusters.items():
        lines.append(f"**k = {k}**")
        lines += [f"- cluster {c}: {', '.join(members)}" for c, members in
                  clustering.cluster_members(assignment).items()]
        lines.append("")
    if result.cophenetic_correlation is not None:
        lines.append(f"Cophenetic correlation, predictions tree vs embeddings tree: "
                     f"{result.cophenetic_correlation:.3f}")
    truth = result.ari_vs_truth
    if truth:
        parts = [f"{name} {score.at_true_k:.3f}" for name, score in
                 (("distances", truth.distances), ("embeddings", truth.embeddings))
                 if score is not None and score.at_true_k is not None]
        lines.append(f"Adjusted Rand index vs the true groups at the true k: {', '.join(parts)}")
    overlap = result.overlap
    if overlap:
        lines.append(f"Pairs with fewer than {overlap.min_overlap} shared items: "
                     f"{overlap.n_low_overlap_pairs} of {overlap.n_pairs} (imputed)")
    for warning in result.warnings:
        lines.append(f"> {warning}")
    if result.styles and result.styles.cards:
        lines += ["", f"## Style cards (against the {result.styles.reference})", ""]
        lines += [f"- {line.strip()}" if not line.startswith("  ") else f"  {line.strip()}"
                  for line in card_lines(result.styles.cards, limit=30)]
    lines += ["", f"MLflow run: `{result.mlflow_run_id}`" + (f" ({run_link})" if run_link else "")]
    return "\n".join(lines) + "\n"
