"""What `annostyle verify` found: per store, per array, the damaged files and why."""

from __future__ import annotations

from typing import Literal

from storage.results import ResultModel, StageResult


class DamagedFile(ResultModel):
    """One store file that fails its check: `array` is the array path (or "manifest")."""

    file: str
    array: str
    problem: str


class ArrayReport(ResultModel):
    """One array: how many chunk files were checked and which are damaged."""

    name: str
    chunks: int
    damaged: list[DamagedFile] = []


class StoreReport(ResultModel):
    """One store: its arrays, and damage outside them (the manifest, a zarr.json)."""

    kind: Literal["dataset", "predictions"]
    uri: str
    exists: bool
    arrays: list[ArrayReport] = []
    damaged: list[DamagedFile] = []

    @property
    def n_damaged(self) -> int:
        return len(self.damaged) + sum(len(a.damaged) for a in self.arrays)

    @property
    def ok(self) -> bool:
        return self.n_damaged == 0


class VerifyResult(StageResult):
    """Every store of a dataset, checked; `ok` when nothing is damaged."""

    dataset: str
    stores: list[StoreReport]

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.stores)
