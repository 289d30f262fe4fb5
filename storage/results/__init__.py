"""Typed stage results: what each stage returns, what MLflow records and what `--json` prints.

Every stage (ingest, train, predict, analyze, probe, reprocess, pipeline) returns a subclass of
`StageResult`, a pydantic model: attributes, not string keys, between the stages; `to_json()` is
the JSON summary (the `--json` output); Prefect's persisted stage cache stores and rebuilds them.
They live in `storage/` because both `tasks/` (which makes them) and `storage/tracking` (which
records them) use them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class ResultModel(BaseModel):
    """A typed piece of a result: unknown fields are errors; numpy scalars are not allowed in."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StageResult(ResultModel):
    """A stage's result; `mlflow_run_id` is set once MLflow has recorded it."""

    mlflow_run_id: str | None = None

    def to_json(self) -> dict[str, Any]:  # JSON boundary: the documented `--json` summary
        """The JSON summary (what `--json` prints)."""
        return self.model_dump(mode="json")
