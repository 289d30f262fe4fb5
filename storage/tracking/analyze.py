"""What an analysis run records in MLflow."""

from __future__ import annotations

from pathlib import Path

import mlflow

from configs.schema import PipelineConfig
from storage.layout import RootLayout
from storage.results.analyze import AnalysisResult, PartialSums
from storage.tracking import log_metrics, log_store_input, stage_run


def analysis_metrics(result: AnalysisResult) -> dict[str, float | None]:
    """The numbers worth plotting across runs: tree agreement, ARI, fit, overlap, timing."""
    metrics: dict[str, float | None] = {
        "n_annotators": len(result.annotators),
        "cophenetic_correlation": result.cophenetic_correlation,
        "seconds": result.seconds,
    }
    for method, value in result.tree_fit.items():
        metrics[f"tree_fit_{method}"] = value
    truth = result.ari_vs_truth
    if truth:
        for name, score in (("distances", truth.distances), ("embeddings", truth.embeddings)):
            if score:
                metrics[f"ari_vs_truth_{name}"] = score.at_true_k
    if result.embeddings:
        for k, value in result.embeddings.comparison.ari.items():
            metrics[f"ari_trees_k{k}"] = value
    if result.overlap:
        metrics["n_low_overlap_pairs"] = result.overlap.n_low_overlap_pairs
        metrics["imputed_fraction"] = result.overlap.imputed_fraction
    sums = result.distances if isinstance(result.distances, PartialSums) else None
    metrics["frames_computed"] = sums.frames_computed if sums else None
    metrics["frames_per_second"] = sums.frames_per_second if sums else None
    if result.styles:
        metrics["krippendorff_alpha"] = result.styles.agreement.krippendorff_alpha
        if result.styles.quality:
            for flag in ("constant", "near_random", "adversarial"):
                metrics[f"n_flagged_{flag}"] = len(result.styles.quality.flagged.get(flag, []))
    if result.item_level:
        for name, value in result.item_level.purity.items():
            metrics[f"purity_{name}"] = value
    return {k: v for k, v in metrics.items() if v is None or v == v}  # drop NaN


def record_analysis(layout: RootLayout, config: PipelineConfig, result: AnalysisResult, *,
                    config_path: Path | None = None) -> str:
    """One MLflow run for one analysis: stores read, metrics, tables, figures; returns its run id.

    The tables and figures are the files `tasks.analyze` wrote to `result.outputs`. The result
    gets `mlflow_run_id` before it is logged as `summary.json`.
    """
    dataset = result.dataset
    stores = result.stores
    tags = {"annostyle.method": result.method, "annostyle.metric": result.metric,
            "annostyle.version": stores.dataset.version, "annostyle.store": stores.dataset.uri}
    if stores.predictions:
        tags["annostyle.predictions"] = stores.predictions.uri
        tags["annostyle.model_run_id"] = str(stores.predictions.model_run_id)
    with stage_run(layout, dataset, "analyze", config.model_dump(mode="json"), tags) as run:
        result.mlflow_run_id = run.info.run_id
        log_store_input(stores.dataset.uri, dataset, stores.dataset.version, context="analyze")
        if stores.predictions:
            log_store_input(stores.predictions.uri, f"{dataset}-predictions", stores.predictions.version,
                            context="analyze")
        log_metrics(analysis_metrics(result))
        outputs = Path(result.outputs)
        for path in sorted(outputs.iterdir()):
            if path.is_file() and path.name not in ("summary.json", "styles.json"):
                mlflow.log_artifact(str(path), "tables")
        if (outputs / "figures").is_dir():
            mlflow.log_artifacts(str(outputs / "figures"), "figures")
        mlflow.log_dict(result.to_json(), "summary.json")
        if result.styles:
            mlflow.log_dict(result.styles.model_dump(mode="json"), "styles.json")
            mlflow.log_table(result.styles.annotator_table(), "tables/styles_annotators.json")
        if config_path is not None:
            mlflow.log_artifact(str(config_path), "config")
        return run.info.run_id


def run_link(run_id: str) -> str:
    """Where to look at a run: its URL on a tracking server, else how to open the local UI."""
    uri = mlflow.get_tracking_uri()
    run = mlflow.get_run(run_id)
    path = f"#/experiments/{run.info.experiment_id}/runs/{run_id}"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{path}"
    return f"mlflow ui --backend-store-uri {uri}, then http://127.0.0.1:5000/{path}"
