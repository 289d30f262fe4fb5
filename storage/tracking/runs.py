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

from errors import InputError
from storage.results.runs import (
    AnnotatorChange,
    AriVsTruth,
    Change,
    ClusterChange,
    MetricChange,
    RunDiff,
    RunRecord,
)

PARENT_STAGES = ("pipeline", "reprocess")
KEY_METRICS = ("n_annotators", "cophenetic_correlation", "ari_vs_truth_distances", "ari_vs_truth_embeddings",
               "final.val_accuracy", "final.val_loss", "val_accuracy", "n_low_overlap_pairs", "seconds")


# JSON boundary: a JSON artifact of a run
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


# JSON boundary: a pipeline.json stage record in, the analysis summary.json out
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


def describe_run(client: MlflowClient, run: Run) -> RunRecord:
    """One parent run as a flat record: when, why, which data and model, what each stage did, the clusters."""
    tags = run.data.tags
    children = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'",
                                  order_by=["attributes.start_time ASC"])
    record = _artifact_json(client, run.info.run_id, "pipeline.json") or {}
    # JSON boundary: pipeline.json's stage records
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
                        if k.startswith(("final.", "val_", "mean.", "sd.")) or k.endswith("consensus_accuracy")})
    ari = ((summary or {}).get("ari_vs_truth") or {}).get("distances")
    return RunRecord(
        run_id=run.info.run_id,
        kind=tags.get("annostyle.stage"),
        experiment=run.info.experiment_id,
        status=run.info.status,
        start_time=_time(run.info.start_time),
        end_time=_time(run.info.end_time),
        trigger=tags.get("annostyle.trigger", "manual"),
        dataset=tags.get("annostyle.dataset"),
        version=version,
        batch=tags.get("annostyle.batch"),
        code_version=tags.get("annostyle.code_version"),
        model_run_id=None if model_run in (None, "None") else model_run,
        analysis_run_id=analysis_run.info.run_id if analysis_run else None,
        stages=stages,
        method=(summary or {}).get("method"),
        annotators=(summary or {}).get("annotators"),
        clusters=(summary or {}).get("clusters"),
        ari_vs_truth=AriVsTruth.model_validate(ari) if ari else None,
        metrics={k: metrics[k] for k in KEY_METRICS if k in metrics},
        params=dict(run.data.params),
    )


def list_runs(tracking_uri: str, limit: int = 20, dataset: str | None = None) -> list[RunRecord]:
    """Recent pipeline and reprocess runs, newest first, each described by `describe_run`."""
    client = MlflowClient(tracking_uri=tracking_uri)
    return [describe_run(client, run) for run in parent_runs(client, limit, dataset)]


def _groups(assignment: Mapping[str, int]) -> list[list[str]]:
    """Clusters as sorted lists of annotators, independent of the cluster numbers."""
    groups: dict[int, list[str]] = {}
    for annotator, c in assignment.items():
        groups.setdefault(int(c), []).append(annotator)
    return sorted(sorted(g) for g in groups.values())


def _changed(a: str | None, b: str | None) -> Change | None:
    return None if a == b else Change(a=a, b=b)


def _cluster_change(ca: Mapping[str, int] | None, cb: Mapping[str, int] | None) -> ClusterChange:
    """One k's groups in both runs; `moved`: the annotators (in both) whose group mates changed."""
    ga = _groups(ca) if ca is not None else None
    gb = _groups(cb) if cb is not None else None
    if ca is None or cb is None:
        return ClusterChange(same=ga == gb, a=ga, b=gb)
    common = set(ca) & set(cb)
    moved = [x for x in sorted(common)
             if {y for y in common if ca[y] == ca[x]} != {y for y in common if cb[y] == cb[x]}]
    return ClusterChange(same=ga == gb, a=ga, b=gb, moved=moved)


def diff_records(a: RunRecord, b: RunRecord) -> RunDiff:
    """What changed from run `a` to run `b`: data version, params, annotators, clusters, key metrics."""
    params = {k: Change(a=a.params.get(k), b=b.params.get(k))
              for k in sorted(set(a.params) | set(b.params)) if a.params.get(k) != b.params.get(k)}
    ann_a, ann_b = set(a.annotators or []), set(b.annotators or [])
    ca, cb = a.clusters or {}, b.clusters or {}
    clusters = {str(k): _cluster_change(ca.get(k), cb.get(k)) for k in sorted(set(ca) | set(cb), key=int)}
    ma, mb = a.metrics, b.metrics
    metrics = {k: MetricChange(a=ma.get(k), b=mb.get(k), delta=None if k not in ma or k not in mb else mb[k] - ma[k])
               for k in sorted(set(ma) | set(mb)) if ma.get(k) != mb.get(k)}
    stages = {s: Change(a=(a.stages.get(s) or {}).get("status"), b=(b.stages.get(s) or {}).get("status"))
              for s in sorted(set(a.stages) | set(b.stages))}
    return RunDiff(
        a=a.run_id, b=b.run_id,
        dataset=_changed(a.dataset, b.dataset),
        version=_changed(a.version, b.version),
        trigger=_changed(a.trigger, b.trigger),
        code_version=_changed(a.code_version, b.code_version),
        model_run_id=_changed(a.model_run_id, b.model_run_id),
        method=_changed(a.method, b.method),
        params=params,
        annotators=AnnotatorChange(added=sorted(ann_b - ann_a), removed=sorted(ann_a - ann_b)),
        clusters=clusters,
        clusters_changed=any(not c.same for c in clusters.values()),
        metrics=metrics,
        stages=stages,
    )


def diff_runs(tracking_uri: str, run_a: str, run_b: str) -> RunDiff:
    """`diff_records` of two parent runs given their ids; an unknown id is bad input."""
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        a, b = client.get_run(run_a), client.get_run(run_b)
    except MlflowException as err:
        raise InputError(tracking_uri, "--diff", [run_a, run_b], f"no such run: {err.message}") from err
    return diff_records(describe_run(client, a), describe_run(client, b))
