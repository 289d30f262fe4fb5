"""What `annostyle run` and `annostyle reprocess` return: per-stage statuses and the outcome.

Their `--json` summaries keep today's keys: a stage status, and the reprocess result, print their
required fields always and an optional one only when the flow set it (so a stage skipped for a
reason shows `reason`, a predict stage of reprocess shows its frame counts, and nothing else
grows `null` keys it never had).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import SerializerFunctionWrapHandler, model_serializer

from storage.results import Number, ResultModel, StageResult
from storage.results.analyze import AriVsTruth, Clusters, LabelCounts, PartialSums
from storage.results.styles import StyleCard
from storage.results.train import MeanSd, TrainMetrics

Status = Literal["ran", "reused", "skipped"]


class _SetFieldsOnly(ResultModel):
    """Serialises its required fields and the optional ones that were set (even to None)."""

    @model_serializer(mode="wrap")
    def _set_fields_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:  # JSON boundary
        data = handler(self)
        return {k: v for k, v in data.items()
                if k in self.model_fields_set or type(self).model_fields[k].is_required()}


class StageStatus(_SetFieldsOnly):
    """What one stage of a pipeline or reprocess run did.

    `run_id` is the stage's MLflow run (a reused stage's own nested run; None when skipped);
    `reused_from` the run whose cached result it reused; `reason` why it was skipped or what it
    did instead; `batch_status` (ingest) `appended` or `unchanged`; `frames_predicted` and
    `frames_reused` (reprocess's predict stage) what the prediction store gained.
    """

    status: Status
    run_id: str | None
    reused_from: str | None = None
    reason: str | None = None
    batch_status: str | None = None
    frames_predicted: int | None = None
    frames_reused: int | None = None


class PipelineResult(StageResult):
    """`annostyle run`'s summary: the stages, the clusters and where everything is recorded.

    `mlflow_run_id` is the parent run; `metrics`, `model_dir` come from training (None for a
    label-only dataset), `prediction_store` from predict (None when it was skipped).
    """

    dataset: str
    version: str
    trigger: str
    stages: dict[str, StageStatus]
    annotators: list[str]
    clusters: Clusters
    ari_vs_truth: AriVsTruth | None
    method: str
    cophenetic_correlation: Number
    style_cards: list[StyleCard] = []  # the analysis's style cards (tasks.styles)
    metrics: TrainMetrics | None
    model_dir: str | None
    train_seed: int | None = None  # the seed whose model was predicted and analysed (train.seeds' first)
    train_summary: dict[str, dict[str, MeanSd]] = {}  # model -> metric -> mean and sd over the seeds
    prediction_store: str | None
    tracking_uri: str
    root: str


class ReprocessResult(_SetFieldsOnly, StageResult):
    """`annostyle reprocess`'s summary: what the batch changed, what was recomputed and why.

    A batch already ingested and analysed stops after ingest: the analysis fields stay unset.
    `frames_predicted` is set for datasets with a model; `partial_sums` is the analysis's
    `distances` (`PartialSums` from predictions, `LabelCounts` for a label-only dataset).
    """

    dataset: str
    version: str
    trigger: str
    batch: str
    batch_status: str
    new_frames: int
    changed_frames: int
    new_annotators: list[str]
    stages: dict[str, StageStatus]
    recomputed: list[str]
    frames_predicted: int | None = None
    partial_sums: PartialSums | LabelCounts | None = None
    annotators: list[str] | None = None
    clusters: Clusters | None = None
    distance_matrix: list[list[Number]] | None = None
    ari_vs_truth: AriVsTruth | None = None
