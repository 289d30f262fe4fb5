"""The analysis flow: dataset (+ prediction store) -> annotator clusters -> MLflow run + Prefect artifact."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from configs.schema import PipelineConfig, load_config
from flows.retry import retry_unless_bad_input
from storage.layout import RootLayout
from storage.results.analyze import AnalysisResult
from storage.results.styles import card_lines
from storage.tracking.analyze import record_analysis, run_link
from tasks.clustering import cluster_members


def analyze(config: PipelineConfig, layout: RootLayout, scheduler: str | None = None) -> AnalysisResult:
    """`tasks.analyze.analyze`, imported when the stage runs (it imports Matplotlib and the
    distance code), so a pipeline whose analysis is reused never loads them."""
    from tasks.analyze import analyze as analyze_stores

    return analyze_stores(config, layout, scheduler)


analyze_task = task(name="analyze", retries=1, retry_delay_seconds=[2.0], retry_condition_fn=retry_unless_bad_input,
                    cache_policy=NO_CACHE)(analyze)
"""Prefect task; bad input (an InputError) is not retried."""


@flow(name="analyze", validate_parameters=False)
def analyze_flow(config_path: str, root: str, scheduler: str | None = None) -> AnalysisResult:
    """Group the config's annotators by style and record the run.

    Uses the config's prediction store when there is one, else the labels. `scheduler` (a Dask
    address, "local-cluster" or None) overrides the config's.
    """
    config = load_config(config_path)
    layout = RootLayout(Path(root), config.store.uri_prefix)
    result = analyze_task(config, layout, scheduler)
    result.mlflow_run_id = record_analysis(layout, config, result, config_path=Path(config_path))
    publish_clusters(result)
    return result


def publish_clusters(result: AnalysisResult, run_id: str | None = None) -> None:
    """Prefect artifacts of an analysis: a markdown summary and a table of each annotator's cluster
    at every k, both linking to the MLflow run (`run_id`, by default the result's own run).

    Sets `result.mlflow_link`.
    """
    run_id = run_id or result.mlflow_run_id
    if run_id is None:
        raise ValueError("publish_clusters needs the MLflow run of the analysis")
    result.mlflow_link = link = run_link(run_id)
    dataset = result.dataset
    key = re.sub(r"[^a-z0-9-]+", "-", dataset.lower()).strip("-") or "dataset"
    from tasks.analyze import summary_markdown

    create_markdown_artifact(markdown=summary_markdown(result, link),
                             key=f"analyze-{key}", description=f"annotator clusters of {dataset}")
    rows = [{"annotator": a, **{f"k={k}": result.clusters[k][a] for k in result.clusters},
             "mlflow_run": run_id} for a in result.annotators]
    create_table_artifact(table=rows, key=f"clusters-{key}",
                          description=f"annotator clusters of {dataset}; MLflow: {link}")


def cli_run(args: argparse.Namespace) -> AnalysisResult:
    return analyze_flow(config_path=str(Path(args.config).resolve()), root=str(args.root.resolve()),
                        scheduler=args.scheduler)


def cli_print(result: AnalysisResult) -> None:
    n = len(result.annotators)
    print(f"dataset {result.dataset}: {n} annotators grouped by {result.method} "
          f"({result.metric}, {result.linkage_method} linkage)")
    for k, assignment in result.clusters.items():
        shown = "; ".join(f"{c} ({len(m)}): {', '.join(m[:8])}{' ...' if len(m) > 8 else ''}"
                          for c, m in cluster_members(assignment).items())
        print(f"  k={k}  {shown}")
    if result.cophenetic_correlation is not None:
        print(f"  predictions tree vs embeddings tree: cophenetic correlation "
              f"{result.cophenetic_correlation:.3f}")
        if result.embeddings:
            for k, names in result.embeddings.comparison.moved.items():
                if names:
                    print(f"    k={k}: {len(names)} annotator(s) change cluster: {', '.join(names)}")
    truth = result.ari_vs_truth
    if truth:
        for name, score in (("distances", truth.distances), ("embeddings", truth.embeddings)):
            if score and score.at_true_k is not None:
                print(f"  ARI vs true groups ({name}, k={score.true_k}): {score.at_true_k:.3f}")
    overlap = result.overlap
    if overlap and overlap.n_low_overlap_pairs:
        print(f"  {overlap.n_low_overlap_pairs} of {overlap.n_pairs} pairs share < {overlap.min_overlap} "
              f"items (imputed: {overlap.imputed_value:.3f}); list in the summary and low_overlap_pairs.csv")
    for warning in result.warnings:
        print(f"  note: {warning}")
    styles = result.styles
    if styles:
        alpha = styles.agreement.krippendorff_alpha
        print(f"  styles against the {styles.reference}: Krippendorff's alpha "
              f"{'undefined' if alpha is None else f'{alpha:.3f}'} over {styles.agreement.n_items} items"
              + (f"; cluster cards at k={styles.k}" if styles.k else ""))
        print("\n".join(f"  {line}" for line in card_lines(styles.cards)))
    print(f"  tables and figures in {result.outputs}")
    print(f"  MLflow run {result.mlflow_run_id}: {result.mlflow_link}")
