"""What `annostyle run CONFIG CONFIG ...` returns: one pipeline summary per dataset, in order."""

from __future__ import annotations

from storage.results import ResultModel, StageResult
from storage.results.pipeline import PipelineResult
from storage.results.probe import ProbeResult


class DatasetRun(ResultModel):
    """One dataset of a multi-config run: its config, its wall time in the flow, its summary."""

    config: str
    seconds: float
    result: PipelineResult
    probe: ProbeResult | None = None
    """Its representation probe, when `--probe` named it (run after its pipeline)."""


class MultiPipelineResult(StageResult):
    """Several datasets run in one process and one Prefect flow (`pipelines`), each with its own
    MLflow parent run (`runs[i].result.mlflow_run_id`); `mlflow_run_id` itself stays None."""

    runs: list[DatasetRun]
    seconds: float
    root: str
    jobs: int = 1
    """How many datasets ran side by side (`--jobs`)."""
