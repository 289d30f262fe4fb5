"""Typed stage results: what each stage returns, what MLflow records and what `--json` prints.

Every stage (ingest, train, predict, analyze, probe, reprocess, pipeline) returns a subclass of
`StageResult`, a pydantic model: attributes, not string keys, between the stages; `to_json()` is
the JSON summary (the `--json` output); Prefect's persisted stage cache stores and rebuilds them.
They live in `storage/` because both `tasks/` (which makes them) and `storage/tracking` (which
records them) use them.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict


def _finite_or_none(value: object) -> object:
    """NaN and inf as None (anything else unchanged, for pydantic to check)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


Number = Annotated[float | None, BeforeValidator(_finite_or_none)]
"""A number that can be undefined (a NaN correlation, an ARI over one cluster): NaN and inf
become None, so a summary is valid JSON and reads the same in Python."""


class ResultModel(BaseModel):
    """A typed piece of a result: unknown fields are errors; numpy scalars are not allowed in."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StageResult(ResultModel):
    """A stage's result; `mlflow_run_id` is set once MLflow has recorded it."""

    mlflow_run_id: str | None = None

    def to_json(self) -> dict[str, Any]:  # JSON boundary: the documented `--json` summary
        """The JSON summary (what `--json` prints)."""
        return self.model_dump(mode="json")
