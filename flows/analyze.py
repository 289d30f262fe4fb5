"""The analysis flow: dataset (+ prediction store) -> annotator clusters -> MLflow run + Prefect artifact."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from configs.schema import load_config
from storage.tracking.analyze import record_analysis, run_link
from tasks.analyze import analyze_task, summary_markdown
from tasks.clustering import cluster_members


@flow(name="analyze", validate_parameters=False)
def analyze_flow(config_path: str, root: str, scheduler: str | None = None) -> dict[str, Any]:
    """Group the config's annotators by style and record the run.

    Uses the prediction store `<root>/predictions/<name>.zarr` when there is one, else the
    labels. `scheduler` (a Dask address, "local-cluster" or None) overrides the config's.
    """
    config = load_config(config_path)
    summary = analyze_task(config, Path(root), scheduler)
    run_id = record_analysis(Path(root), config.model_dump(mode="json"), summary, Path(config_path))
    summary["mlflow_run_id"] = run_id
    publish_clusters(summary, config.name, run_id)
    return summary


def publish_clusters(summary: dict[str, Any], dataset: str, run_id: str) -> None:
    """Prefect artifacts of an analysis: a markdown summary and a table of each annotator's cluster
    at every k, both linking to the MLflow run."""
    summary["mlflow_link"] = run_link(run_id)
    key = re.sub(r"[^a-z0-9-]+", "-", dataset.lower()).strip("-") or "dataset"
    create_markdown_artifact(markdown=summary_markdown(summary, summary["mlflow_link"]),
                             key=f"analyze-{key}", description=f"annotator clusters of {dataset}")
    rows = [{"annotator": a, **{f"k={k}": summary["clusters"][k][a] for k in summary["clusters"]},
             "mlflow_run": run_id} for a in summary["annotators"]]
    create_table_artifact(table=rows, key=f"clusters-{key}",
                          description=f"annotator clusters of {dataset}; MLflow: {summary['mlflow_link']}")


def cli_run(args: argparse.Namespace) -> dict[str, Any]:
    return analyze_flow(config_path=str(Path(args.config).resolve()), root=str(args.root.resolve()),
                        scheduler=args.scheduler)


def cli_print(summary: dict[str, Any]) -> None:
    n = len(summary["annotators"])
    print(f"dataset {summary['dataset']}: {n} annotators grouped by {summary['method']} "
          f"({summary['metric']}, {summary['linkage_method']} linkage)")
    for k, assignment in summary["clusters"].items():
        shown = "; ".join(f"{c} ({len(m)}): {', '.join(m[:8])}{' ...' if len(m) > 8 else ''}"
                          for c, m in cluster_members(assignment).items())
        print(f"  k={k}  {shown}")
    if summary.get("cophenetic_correlation") is not None:
        print(f"  predictions tree vs embeddings tree: cophenetic correlation "
              f"{summary['cophenetic_correlation']:.3f}")
        moved = summary["embeddings"]["comparison"]["moved"]
        for k, names in moved.items():
            if names:
                print(f"    k={k}: {len(names)} annotator(s) change cluster: {', '.join(names)}")
    truth = summary.get("ari_vs_truth")
    if truth:
        for name in ("distances", "embeddings"):
            if truth.get(name):
                print(f"  ARI vs true groups ({name}, k={truth[name]['true_k']}): {truth[name]['at_true_k']:.3f}")
    overlap = summary.get("overlap")
    if overlap and overlap["n_low_overlap_pairs"]:
        print(f"  {overlap['n_low_overlap_pairs']} of {overlap['n_pairs']} pairs share < {overlap['min_overlap']} "
              f"items (imputed: {overlap['imputed_value']:.3f}); list in the summary and low_overlap_pairs.csv")
    for warning in summary.get("warnings", []):
        print(f"  note: {warning}")
    print(f"  tables and figures in {summary['outputs']}")
    print(f"  MLflow run {summary['mlflow_run_id']}: {summary['mlflow_link']}")
