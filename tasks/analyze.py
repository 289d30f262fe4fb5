"""One analysis of a dataset: annotator distances, trees, the embedding comparison, item views.

With a prediction store at `<root>/predictions/<name>.zarr`, distances come from the predicted
probabilities (tasks.distances) and the tree is compared with the tree of the learned
annotator embeddings; without one (label-only data, or no model yet), distances come from the
labels (tasks.label_distances). Tables and figures go to `<root>/analysis/<name>/` (replaced
on every run; MLflow keeps each run's copy); the return value is a JSON-able summary.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE
from threadpoolctl import threadpool_limits

from configs.analyze import AnalyzeConfig
from configs.schema import PipelineConfig
from errors import InputError
from flows.retry import retry_unless_bad_input
from storage.dataset_store import DatasetStore, dataset_uri
from storage.prediction_store import PredictionStore, prediction_uri
from tasks import clustering, figures
from tasks.distances import dask_scheduler, describe_scheduler, store_distances
from tasks.label_distances import label_distances, store_pair_counts

log = logging.getLogger(__name__)


def analysis_dir(root: Path, name: str) -> Path:
    return Path(root) / "analysis" / name


def analyze(config: PipelineConfig, root: Path, scheduler: str | None = None) -> dict[str, Any]:
    """Analyse the config's dataset under `root`; `scheduler` overrides `analyze.scheduler`."""
    t0 = time.perf_counter()
    cfg = config.analyze
    data_uri = dataset_uri(root, config.name, config.store.uri_prefix)
    if not DatasetStore.exists(data_uri):
        raise InputError(data_uri, None, config.name, "no dataset store (run `annostyle ingest` first)")
    dataset = DatasetStore.open(data_uri)
    out = analysis_dir(root, config.name)
    shutil.rmtree(out, ignore_errors=True)
    (out / "figures").mkdir(parents=True)
    pred_uri = prediction_uri(root, config.name, config.store.uri_prefix)
    truth = (dataset.meta.get("truth") or {}).get("style_groups")
    address = scheduler or cfg.scheduler
    with threadpool_limits(limits=1):  # small matrices: thread pools only cost here (see tasks.projections)
        if PredictionStore.exists(pred_uri):
            log.info("analysing %s from its prediction store %s", config.name, pred_uri)
            summary = analyze_predictions(PredictionStore.open(pred_uri, mode="r+"), dataset, cfg, out, truth,
                                          address)
        else:
            log.info("analysing %s from its labels (no prediction store at %s)", config.name, pred_uri)
            summary = analyze_labels(dataset, cfg, out, truth)
    summary = _finite({"dataset": config.name, **summary, "outputs": str(out),
                       "seconds": round(time.perf_counter() - t0, 3)})
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary



analyze_task = task(analyze, name="analyze", retries=1, retry_delay_seconds=[2],
                    retry_condition_fn=retry_unless_bad_input, cache_policy=NO_CACHE)


# --------------------------------------------------------------------------- predictions
def analyze_predictions(store: PredictionStore, dataset: DatasetStore, cfg: AnalyzeConfig, out: Path,
                        truth: dict[str, str] | None, address: str | None) -> dict[str, Any]:
    """Prediction-based distances, the trees, the embedding tree and the item-level views."""
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
    summary, trees = _trees_summary(dist.matrix, annotators, cfg, truth, out, warnings,
                                    f"{cfg.metric} distance of predicted probabilities",
                                    euclidean=cfg.metric == "euclidean")
    summary.update(method="predictions", metric=cfg.metric, scheduler=describe_scheduler(address),
                   distances=dist.report())

    table = store.annotator_embeddings()
    primary = cfg.linkage[0]
    if not np.any(table):
        warnings.append("the store holds no annotator embeddings: no embedding tree")
        summary.update(cophenetic_correlation=None, embeddings=None)
    else:
        emb_tree = clustering.embedding_tree(table, primary)
        comparison = clustering.compare_trees(trees[primary], emb_tree, annotators, cfg.ks)
        summary["cophenetic_correlation"] = comparison["cophenetic_correlation"]
        summary["embeddings"] = {
            "linkage_method": primary,
            "linkage": emb_tree.tolist(),
            "clusters": clustering.clusters_by_k(emb_tree, annotators, cfg.ks),
            "comparison": comparison,
        }
        if truth:
            summary["ari_vs_truth"]["embeddings"] = clustering.ari_vs_truth(emb_tree, annotators, truth, cfg.ks)
        emb_dist = clustering.embedding_distances(table)
        _write_matrix(out / "embedding_distances.csv", emb_dist, annotators)
        (out / "linkage_embeddings.json").write_text(json.dumps(emb_tree.tolist()))
        if cfg.figures:
            figures.save(figures.dendrograms({f"predictions ({cfg.metric}, {primary})": trees[primary],
                                              f"annotator embeddings (euclidean, {primary})": emb_tree},
                                             annotators, truth), out / "figures" / "dendrograms.png")
            figures.save(figures.clustermap(table, annotators, "learned annotator embeddings", primary,
                                            value_label="weight"),
                         out / "figures" / "embedding_clustermap.png")
    if cfg.projections and store.n_frames >= 50:
        summary["item_level"] = _item_level(store, dataset, cfg, out)
    summary["stores"] = {
        "dataset": {"uri": dataset.uri, "version": dataset.version},
        "predictions": {"uri": store.uri, "version": store.version, "model_run_id": store.model_run_id,
                        "dataset_version": store.dataset_version},
    }
    summary["warnings"] = warnings
    return summary


def _item_level(store: PredictionStore, dataset: DatasetStore, cfg: AnalyzeConfig, out: Path) -> dict[str, Any]:
    from tasks.projections import item_level, sample_frames

    frames = sample_frames(store.n_frames, store.chunk_frames, cfg.projection_sample, cfg.seed)
    gold = _gold_at(dataset, frames, store.chunk_frames)
    if (gold >= 0).mean() >= 0.5:
        keep = gold >= 0
        frames, labels, source = frames[keep], gold[keep].astype(np.int64), "gold"
    else:
        consensus = store.consensus.get_orthogonal_selection((frames,))
        labels, source = np.argmax(consensus, axis=1).astype(np.int64), "consensus"
    embeddings = store.embeddings.get_orthogonal_selection((frames,))
    methods = ["pca", *(["tsne"] if cfg.tsne else []), *(["umap"] if cfg.umap else [])]
    result = item_level(embeddings, labels, frames, source, methods, cfg.rsm_sample, cfg.seed)
    names = store.class_names
    if cfg.figures:
        figures.save(figures.projection_grid(result.coords, labels, names,
                                             f"encoder embeddings of {len(frames)} frames, coloured by {source}"),
                     out / "figures" / "projections.png")
        figures.save(figures.rsm_figure(result.rsm, result.rsm_labels, names,
                                        f"cosine similarity of {len(result.rsm_labels)} frames, sorted by {source}"),
                     out / "figures" / "rsm.png")
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
def analyze_labels(dataset: DatasetStore, cfg: AnalyzeConfig, out: Path,
                   truth: dict[str, str] | None) -> dict[str, Any]:
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
    if report["n_low_overlap_pairs"]:
        warnings.append(f"{report['n_low_overlap_pairs']} of {report['n_pairs']} annotator pairs share fewer than "
                        f"{cfg.min_overlap} labelled items; their distance is imputed ({cfg.impute} = "
                        f"{report['imputed_value']:.3f})")
    label = "1 - Cohen's kappa" if cfg.label_distance == "kappa" else "disagreement rate"
    summary, trees = _trees_summary(dist.matrix, annotators, cfg, truth, out, warnings, f"{label} (labels)",
                                    euclidean=False)
    summary.update(method="labels", metric=cfg.label_distance, cophenetic_correlation=None, embeddings=None,
                   overlap=report, distances={"seconds": round(seconds, 3), "n_frames": dataset.n_frames})
    _write_matrix(out / "overlap.csv", dist.overlap, annotators)
    _write_matrix(out / "kappa.csv", dist.kappa, annotators)
    _write_matrix(out / "disagreement.csv", dist.disagreement, annotators)
    _write_columns(out / "low_overlap_pairs.csv", {
        "annotator_a": [p[0] for p in report["low_overlap_pairs"]],
        "annotator_b": [p[1] for p in report["low_overlap_pairs"]],
        "overlap": [p[2] for p in report["low_overlap_pairs"]]})
    if cfg.figures:
        shown = {f"labels ({cfg.label_distance}, {m})": trees[m] for m in cfg.linkage[:2]}
        figures.save(figures.dendrograms(shown, annotators, truth), out / "figures" / "dendrograms.png")
        figures.save(figures.clustermap(dist.matrix, annotators, f"{label}, annotators ordered by "
                                        f"{cfg.linkage[0]} linkage", cfg.linkage[0], square_distances=True,
                                        value_label=cfg.label_distance),
                     out / "figures" / "distance_clustermap.png")
        figures.save(figures.distance_heatmap(np.log10(1 + dist.overlap), annotators,
                                              "shared labelled items per pair", label="log10(1 + items)"),
                     out / "figures" / "overlap_heatmap.png")
    summary["stores"] = {"dataset": {"uri": dataset.uri, "version": dataset.version}, "predictions": None}
    summary["warnings"] = warnings
    return summary


# -------------------------------------------------------------------------------- shared
def _trees_summary(matrix: np.ndarray, annotators: list[str], cfg: AnalyzeConfig, truth: dict[str, str] | None,
                   out: Path, warnings: list[str], title: str,
                   euclidean: bool) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Trees of every linkage method, their clusters and fit, ARI vs truth, tables and the heatmap."""
    primary = cfg.linkage[0]
    trees = {m: clustering.tree(matrix, m) for m in cfg.linkage}
    if "ward" in trees and not euclidean:
        warnings.append("ward linkage assumes euclidean distances; its merge heights are not variances here")
    by_method = {m: clustering.clusters_by_k(z, annotators, cfg.ks) for m, z in trees.items()}
    summary: dict[str, Any] = {
        "annotators": annotators,
        "distance_matrix": matrix.tolist(),
        "linkage_method": primary,
        "linkage": trees[primary].tolist(),
        "clusters": by_method[primary],
        "clusters_by_method": by_method,
        "tree_fit": {m: clustering.tree_fit(z, matrix) for m, z in trees.items()},
        "ari_vs_truth": None,
    }
    if truth:
        summary["ari_vs_truth"] = {"distances": clustering.ari_vs_truth(trees[primary], annotators, truth, cfg.ks),
                                   "embeddings": None, "truth": {a: truth.get(a) for a in annotators}}
    _write_matrix(out / "distance_matrix.csv", matrix, annotators)
    for m, z in trees.items():
        (out / f"linkage_{m}.json").write_text(json.dumps(z.tolist()))
    (out / "clusters.json").write_text(json.dumps(summary["clusters_by_method"], indent=1))
    if cfg.figures:
        leaves = _leaves(trees[primary])
        figures.save(figures.distance_heatmap(matrix, annotators, f"{title}; rows in {primary} tree order", leaves),
                     out / "figures" / "distance_heatmap.png")
    return summary, trees


def _leaves(linkage_matrix: np.ndarray) -> list[int]:
    from scipy.cluster.hierarchy import leaves_list

    return leaves_list(linkage_matrix).tolist()


def _write_matrix(path: Path, matrix: np.ndarray, names: list[str]) -> None:
    lines = ["annotator," + ",".join(_csv(n) for n in names)]
    for name, row in zip(names, matrix, strict=True):
        lines.append(_csv(name) + "," + ",".join("" if not np.isfinite(v) else repr(float(v)) for v in row))
    path.write_text("\n".join(lines) + "\n")


def _write_columns(path: Path, columns: dict[str, Any]) -> None:
    names = list(columns)
    rows = zip(*[list(np.asarray(columns[n]).tolist()) for n in names], strict=True)
    path.write_text("\n".join([",".join(names), *(",".join(_csv(v) for v in row) for row in rows)]) + "\n")


def _csv(value: Any) -> str:
    text = str(value)
    return f'"{text.replace(chr(34), chr(34) * 2)}"' if any(c in text for c in ',"\n') else text


def _finite(value: Any) -> Any:
    """The summary with NaN and inf replaced by None, so that it is valid JSON."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


# ------------------------------------------------------------------------------ markdown
def summary_markdown(summary: dict[str, Any], run_link: str | None = None) -> str:
    """A short Markdown report of the clusters (for the Prefect artifact)."""
    lines = [f"# Annotator styles: {summary['dataset']}", "",
             f"Distances from **{summary['method']}** ({summary['metric']}), "
             f"{len(summary['annotators'])} annotators, {summary['linkage_method']} linkage.", ""]
    for k, assignment in summary["clusters"].items():
        lines.append(f"**k = {k}**")
        lines += [f"- cluster {c}: {', '.join(members)}" for c, members in
                  clustering.cluster_members(assignment).items()]
        lines.append("")
    if summary.get("cophenetic_correlation") is not None:
        lines.append(f"Cophenetic correlation, predictions tree vs embeddings tree: "
                     f"{summary['cophenetic_correlation']:.3f}")
    truth = summary.get("ari_vs_truth")
    if truth:
        parts = [f"{name} {value['at_true_k']:.3f}" for name, value in truth.items()
                 if isinstance(value, dict) and value.get("at_true_k") is not None]
        lines.append(f"Adjusted Rand index vs the true groups at the true k: {', '.join(parts)}")
    overlap = summary.get("overlap")
    if overlap:
        lines.append(f"Pairs with fewer than {overlap['min_overlap']} shared items: "
                     f"{overlap['n_low_overlap_pairs']} of {overlap['n_pairs']} (imputed)")
    for warning in summary.get("warnings", []):
        lines.append(f"> {warning}")
    lines += ["", f"MLflow run: `{summary.get('mlflow_run_id')}`" + (f" ({run_link})" if run_link else "")]
    return "\n".join(lines) + "\n"
