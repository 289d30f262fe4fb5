"""The ingest stage's result: the store's counts after the batch, and what the batch changed."""

from __future__ import annotations

from storage.results import ResultModel, StageResult


class BatchChange(ResultModel):
    """What one appended batch changed (all zero, rates None, for an unchanged batch)."""

    new_frames: int
    new_sequences: int
    changed_frames: int
    labels_added: int
    labels_replaced: int
    new_annotators: list[str]
    decoded_bytes: int
    stored_bytes: int
    compression_ratio: float | None
    seconds: float
    mb_per_s: float | None


class IngestResult(StageResult):
    """`annostyle ingest`'s summary: the dataset store at its new version, and the batch."""

    dataset: str
    version: str
    n_items: int
    n_sequences: int
    n_frames: int
    n_annotators: int
    n_labels: int
    n_classes: int
    classes: list[str]
    class_names: list[str]
    has_features: bool
    split_counts: dict[str, int] = {}  # frames per split the data gives ({} when it gives none)
    store: str
    annotators: list[str]
    batch_status: str  # "appended" or "unchanged"
    batch_index: int
    batch: BatchChange
