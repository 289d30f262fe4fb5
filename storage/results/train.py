"""What training and fine-tuning return: `TrainResult`, `FinetuneResult` and their metrics.

`TrainResult.to_json()` is the train `--json` summary and the run folder's `summary.json`; the
history file (`history.json`) holds one `EpochMetrics` per model and epoch. A label-only dataset
(no features) gets a `TrainResult` with `head=None`, a `reason` and the aggregators' report in
`metrics.mv` / `metrics.ds`.
"""

from __future__ import annotations

from storage.results import ResultModel, StageResult


class EpochMetrics(ResultModel):
    """One model after one epoch, on the validation frames (crowd labels) and the test frames (gold).

    `val_accuracy` compares each annotator's output with that annotator's validation labels (a
    baseline gives its one prediction for everyone); `consensus_accuracy` the consensus with gold
    on validation and test frames; `val_gold_accuracy` and `test_accuracy` on each alone.
    """

    val_loss: float | None = None
    val_accuracy: float | None = None
    val_accuracy_per_annotator: dict[str, float | None] = {}
    val_accuracy_annotator_mean: float | None = None
    consensus_accuracy: float | None = None
    val_gold_accuracy: float | None = None
    test_accuracy: float | None = None
    train_loss: float | None = None


class BestMetrics(EpochMetrics):
    """A model's metrics at its best epoch (1-based) and the epochs it trained."""

    best_epoch: int
    epochs: int


class AggregatorMetrics(ResultModel):
    """A crowd-kit aggregator (MV, DS) against gold, for a label-only dataset."""

    consensus_accuracy: float | None
    n_gold: int
    agreement_per_annotator: dict[str, float | None]
    seconds: float


class TrainMetrics(EpochMetrics):
    """The annotator model's best-epoch metrics (flat) and each baseline's under its name.

    With a model, `mv` / `ds` are the baseline classifiers (`BestMetrics`, None when not trained);
    without features they are the aggregators' report (`AggregatorMetrics`) and the model fields
    are None.
    """

    best_epoch: int | None = None
    epochs: int | None = None
    mv: BestMetrics | AggregatorMetrics | None = None
    ds: BestMetrics | AggregatorMetrics | None = None

    def baselines(self) -> dict[str, BestMetrics | AggregatorMetrics]:
        """The baselines (or aggregators) present, by name."""
        return {name: m for name, m in (("mv", self.mv), ("ds", self.ds)) if m is not None}


class TrainResult(StageResult):
    """One training run (or, with `head=None`, the aggregators of a label-only dataset)."""

    dataset: str
    version: str
    store: str
    key: str | None = None  # the run folder's key: dataset version plus a hash of the train config
    head: str | None  # the head's kind; None: no model (see `reason`)
    reason: str | None = None  # why there is no model
    encoder: str | None = None  # the encoder kind trained ("mlp", "temporal")
    context_frames: int | None = None
    device: str | None
    epochs: int
    best_epoch: int | None = None
    resumed_from_epoch: int | None = None
    annotators: list[str]
    classes: list[str]
    class_names: list[str] | None = None
    n_train_frames: int | None = None
    n_val_frames: int | None = None
    n_test_frames: int | None = None
    model_dir: str | None
    checkpoint_dir: str | None = None
    history_path: str | None = None
    seconds: float | None = None
    train_frames_per_s: float | None = None
    model_run_id: str | None = None  # the MLflow run that logged the model (also in its model.json)
    metrics: TrainMetrics


class FinetuneMetrics(ResultModel):
    train_accuracy_per_annotator: dict[str, float | None]


class FinetuneResult(StageResult):
    """A trained head extended to annotators who joined later, fine-tuned with the encoder frozen."""

    dataset: str
    version: str
    store: str
    key: str
    head: str
    device: str
    epochs: int
    model_dir: str
    finetuned_from: str
    new_annotators: list[str]
    annotators: list[str]
    n_frames: int
    loss: list[float]  # mean loss per epoch
    seconds: float
    model_run_id: str | None = None
    metrics: FinetuneMetrics
