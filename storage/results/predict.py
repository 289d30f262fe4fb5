"""What the predict stage returns: the prediction store's summary and what this run did."""

from __future__ import annotations

from storage.results import ResultModel, StageResult


class NpzExport(ResultModel):
    """The MABe notebook's npz layout written by `annostyle predict --export-npz`."""

    sequences: int
    files: int
    bytes: int
    dest: str


class PredictResult(StageResult):
    """The prediction store after a predict run (`PredictionStore.summary()`), and the run's counts.

    `frames_per_s` is the throughput of the frames predicted by this run (None when none were).
    """

    store: str
    version: str
    shape: list[int]  # [frames, annotators, classes]
    dtype: str
    chunk_frames: int
    bytes: int
    logits_bytes: int
    compression_ratio: float | None
    complete: bool
    model_run_id: str | None
    dataset_version: str
    dataset: str
    frames_predicted: int
    frames_reused: int
    model_dir: str
    head: str
    frames_per_s: float | None = None
    npz: NpzExport | None = None
