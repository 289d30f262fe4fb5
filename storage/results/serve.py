"""What `annostyle serve`, `annostyle deploy` and `annostyle watch` return once they stop.

The field names are the `--json` keys.
"""

from __future__ import annotations

from storage.results import StageResult


class ServeResult(StageResult):
    """`annostyle serve`: the deployments served and, with `--watch`, the batches by ledger status."""

    dataset: str
    api_url: str
    cron: str | None
    deployments: list[str]
    watch: str | None
    ledger: str | None
    batches: dict[str, int] = {}


class DeployResult(StageResult):
    """`annostyle deploy`: the deployments created on a work pool."""

    dataset: str
    api_url: str
    pool: str
    cron: str | None
    deployments: list[str]
    ids: list[str]


class WatchResult(StageResult):
    """`annostyle watch`: the watched folder and the batches by ledger status."""

    dataset: str
    watch: str
    ledger: str
    batches: dict[str, int]
