"""Reading pipeline and reprocess runs back from MLflow: a listing for audits and a diff of two runs.

Pure queries on a tracking URI (a SQLite store or a server); nothing here writes to MLflow.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

PARENT_STAGES = ("pipeline", "reprocess")
KEY_METRICS = ("n_annotators", "cophenetic_correlation", "ari_vs_truth_distances", "ari_vs_truth_embeddings",
               "final.val_accuracy", "final.val_loss", "val_accuracy", "n_low_overlap_pairs", "seconds")


def _artifact_json(client: MlflowClient, run_id: str, path: str) -> dict[str, Any] | None:
    """A JSON artifact of a run, or None if the run has no such artifact."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, path, tmp)
        except (MlflowException, OSError):
            return None
        file = Path(local)
        return json.loads(file.read_text()) if file.is_file() else None


def _run_or_none(client: MlflowClient, run_id: str | None) -> Run | None:
    if not run_id or run_id == "None":
        return None
    try:
        return client.get_run(run_id)
    except MlflowException:
        return None


def _time(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def parent_runs(client: MlflowClient, limit: int = 20, dataset: str | None = None) -> list[Run]:
    """The most recent pipeline and reprocess runs of every `annostyle/*` experiment, newest first."""
    experiments = [e.experiment_id for e in client.search_experiments(filter_string="name LIKE 'annostyle/%'")
                   if dataset is None or e.name == f"annostyle/{dataset}"]
    if not experiments:
        return []
    runs: list[Run] = []
    for stage in PARENT_STAGES:
        runs += client.search_runs(experiments, f"tags.`annostyle.stage` = '{stage}'", max_results=limit,
                                   order_by=["attributes.start_time DESC"])
    return sorted(runs, key=lambda r: r.info.start_time or 0, reverse=True)[:limit]


def _analysis(client: MlflowClient, stage: Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, Run | None]:
    """The analysis summary and the run that computed it (the original one when the stage was reused)."""
    if not stage or not stage.get("run_id"):
        return None, None
    source = _run_or_none(client, stage.get("reused_from")) or _run_or_none(client, stage["run_id"])
    if source is None:
        return None, None
    summary = _artifact_json(client, source.info.run_id, "summary.json")
    if summary is None:  # a reuse run keeps the summary under the stage's name
        summary = _artifact_json(client, stage["run_id"], "analyze_summary.json")
    return summary, source


def describe_run(client: MlflowClient, run: Run) -> dict[str, Any]:
    """One parent run as a flat record: when, why, which data and model, what each stage did, the clusters."""
    tags = run.data.tags
    children = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'",
                                  order_by=["attributes.start_time ASC"])
    record = _artifact_json(client, run.info.run_id, "pipeline.json") or {}
    stages: dict[str, dict[str, Any]] = {name: dict(info) for name, info in (record.get("stages") or {}).items()}
    for child in children:  # runs that died before pipeline.json was written still show up
        name = child.data.tags.get("annostyle.stage", "?").removesuffix(" (reused)")
        entry = stages.setdefault(name, {"status": child.info.status.lower(), "run_id": child.info.run_id})
        entry["mlflow_status"] = child.info.status
    by_id = {c.info.run_id: c for c in children}
    ingest = by_id.get((stages.get("ingest") or {}).get("run_id", ""))
    version = tags.get("annostyle.version") or (ingest.data.tags.get("annostyle.version") if ingest else None)
    model_run = tags.get("annostyle.model_run_id") or (stages.get("train") or {}).get("run_id")
    summary, analysis_run = _analysis(client, stages.get("analyze"))
    metrics: dict[str, float] = {}
    if analysis_run is not None:
        metrics.update(analysis_run.data.metrics)
    train = _run_or_none(client, (stages.get("train") or {}).get("reused_from")) or \
        _run_or_none(client, (stages.get("train") or {}).get("run_id"))
    if train is not None:
        metrics.update({k: v for k, v in train.data.metrics.items()
                        if k.startswith(("final.", "val_")) or k.endswith("consensus_accuracy")})
    return {
        "run_id": run.info.run_id,
        "kind": tags.get("annostyle.stage"),
        "experiment": run.info.experiment_id,
        "status": run.info.status,
        "start_time": _time(run.info.start_time),
        "end_time": _time(run.info.end_time),
        "trigger": tags.get("annostyle.trigger", "manual"),
        "dataset": tags.get("annostyle.dataset"),
        "version": version,
        "batch": tags.get("annostyle.batch"),
        "code_version": tags.get("annostyle.code_version"),
        "model_run_id": None if model_run in (None, "None") else model_run,
        "analysis_run_id": analysis_run.info.run_id if analysis_run else None,
        "stages": stages,
        "method": (summary or {}).get("method"),
        "annotators": (summary or {}).get("annotators"),
        "clusters": (summary or {}).get("clusters"),
        "ari_vs_truth": ((summary or {}).get("ari_vs_truth") or {}).get("distances"),
        "metrics": {k: metrics[k] for k in KEY_METRICS if k in metrics},
        "params": dict(run.data.params),
    }


def list_runs(tracking_uri: str, limit: int = 20, dataset: str | None = None) -> list[dict[str, Any]]:
    """Recent pipeline and reprocess runs, newest first, each described by `describe_run`."""
    client = MlflowClient(tracking_uri=tracking_uri)
    return [describe_run(client, run) for run in parent_runs(client, limit, dataset)]


def _groups(assignment: Mapping[str, int]) -> list[list[str]]:
    """Clusters as sorted lists of annotators, independent of the cluster numbers."""
    groups: dict[int, list[str]] = {}
    for annotator, c in assignment.items():
        groups.setdefault(int(c), []).append(annotator)
    return sorted(sorted(g) for g in groups.values())


def _changed(a: Any, b: Any) -> dict[str, Any] | None:
    return None if a == b else {"a": a, "b": b}


def diff_records(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """What changed from run `a` to run `b`: data version, params, annotators, clusters, key metrics."""
    params_a, params_b = a.get("params") or {}, b.get("params") or {}
    params = {k: {"a": params_a.get(k), "b": params_b.get(k)}
              for k in sorted(set(params_a) | set(params_b)) if params_a.get(k) != params_b.get(k)}
    ann_a, ann_b = set(a.get("annotators") or []), set(b.get("annotators") or [])
    clusters: dict[str, Any] = {}
    ca, cb = a.get("clusters") or {}, b.get("clusters") or {}
    for k in sorted(set(ca) | set(cb), key=lambda x: int(x)):
        ga = _groups(ca[k]) if k in ca else None
        gb = _groups(cb[k]) if k in cb else None
        entry: dict[str, Any] = {"same": ga == gb, "a": ga, "b": gb}
        if ga is not None and gb is not None:
            moved = []
            common = set(ca[k]) & set(cb[k])
            for x in sorted(common):
                with_a = {y for y in common if ca[k][y] == ca[k][x]}
                with_b = {y for y in common if cb[k][y] == cb[k][x]}
                if with_a != with_b:
                    moved.append(x)
            entry["moved"] = moved
        clusters[str(k)] = entry
    ma, mb = a.get("metrics") or {}, b.get("metrics") or {}
    metrics = {k: {"a": ma.get(k), "b": mb.get(k),
                   "delta": None if k not in ma or k not in mb else mb[k] - ma[k]}
               for k in sorted(set(ma) | set(mb)) if ma.get(k) != mb.get(k)}
    stages = {s: {"a": (a["stages"].get(s) or {}).get("status"), "b": (b["stages"].get(s) or {}).get("status")}
              for s in sorted(set(a.get("stages") or {}) | set(b.get("stages") or {}))}
    return {
        "a": a["run_id"], "b": b["run_id"],
        "dataset": _changed(a.get("dataset"), b.get("dataset")),
        "version": _changed(a.get("version"), b.get("version")),
        "trigger": _changed(a.get("trigger"), b.get("trigger")),
        "code_version": _changed(a.get("code_version"), b.get("code_version")),
        "model_run_id": _changed(a.get("model_run_id"), b.get("model_run_id")),
        "method": _changed(a.get("method"), b.get("method")),
        "params": params,
        "annotators": {"added": sorted(ann_b - ann_a), "removed": sorted(ann_a - ann_b)},
        "clusters": clusters,
        "clusters_changed": any(not c["same"] for c in clusters.values()),
        "metrics": metrics,
        "stages": stages,
    }


def diff_runs(tracking_uri: str, run_a: str, run_b: str) -> dict[str, Any]:
    """`diff_records` of two parent runs given their ids."""
    client = MlflowClient(tracking_uri=tracking_uri)
    return diff_records(describe_run(client, client.get_run(run_a)), describe_run(client, client.get_run(run_b)))
