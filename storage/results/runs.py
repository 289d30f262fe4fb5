"""What `annostyle runs` and `annostyle ui` return: run records read back from MLflow, a diff of two.

The field names are the `--json` keys (`annostyle runs --json`, `annostyle runs --diff A B --json`).
"""

from __future__ import annotations

from typing import Any

from storage.results import ResultModel, StageResult


class AriVsTruth(ResultModel):
    """Adjusted Rand index of the tree's cuts against known groups, at the true k and per k."""

    true_k: int
    at_true_k: float | None = None
    by_k: dict[str, float] = {}


class RunRecord(ResultModel):
    """One pipeline or reprocess (parent) run: when, why, which data and model, each stage, the clusters."""

    run_id: str
    kind: str | None
    experiment: str
    status: str
    start_time: str | None
    end_time: str | None
    trigger: str
    dataset: str | None
    version: str | None
    batch: str | None
    code_version: str | None
    model_run_id: str | None
    analysis_run_id: str | None
    stages: dict[str, dict[str, Any]]  # JSON boundary: pipeline.json's stage records, as the run wrote them
    method: str | None
    annotators: list[str] | None
    clusters: dict[str, dict[str, int]] | None
    ari_vs_truth: AriVsTruth | None
    metrics: dict[str, float]
    params: dict[str, str]


class Change(ResultModel):
    """A value of run `a` and of run `b` (present only where they differ)."""

    a: str | None
    b: str | None


class MetricChange(ResultModel):
    a: float | None
    b: float | None
    delta: float | None


class AnnotatorChange(ResultModel):
    added: list[str]
    removed: list[str]


class ClusterChange(ResultModel):
    """The groups at one k in both runs; `moved`: annotators whose group mates changed (both runs cut)."""

    same: bool
    a: list[list[str]] | None
    b: list[list[str]] | None
    moved: list[str] | None = None


class RunDiff(ResultModel):
    """What changed from run `a` to run `b`; None for a field that is the same."""

    a: str
    b: str
    dataset: Change | None
    version: Change | None
    trigger: Change | None
    code_version: Change | None
    model_run_id: Change | None
    method: Change | None
    params: dict[str, Change]
    annotators: AnnotatorChange
    clusters: dict[str, ClusterChange]
    clusters_changed: bool
    metrics: dict[str, MetricChange]
    stages: dict[str, Change]


class RunsResult(StageResult):
    """`annostyle runs`: the recent runs."""

    tracking_uri: str
    runs: list[RunRecord]


class RunsDiffResult(StageResult):
    """`annostyle runs --diff A B`: what changed between two runs."""

    tracking_uri: str
    diff: RunDiff


class UiResult(StageResult):
    """`annostyle ui`, after it stopped."""

    url: str
    root: str
    stopped: bool
    server_exit_code: int | None
