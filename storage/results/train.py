"""What training and fine-tuning return: `TrainResult`, `FinetuneResult` and their metrics.

`TrainResult.to_json()` is the train `--json` summary and the run folder's `summary.json`; the
history file (`history.json`) holds one `EpochMetrics` per model and epoch. A label-only dataset
(no features) gets a `TrainResult` with `head=None`, a `reason` and the aggregators' report in
`metrics.mv` / `metrics.ds`.
"""

from __future__ import annotations

from storage.results import ResultModel, StageResult


class EpochMetrics(ResultModel):
    """One model after one epoch, on the validation items (crowd labels and gold).

    `val_loss` is the cross-entropy of the validation items' crowd labels under the model's
    annotator outputs (a baseline gives its one distribution for everyone); `val_accuracy`
    compares each annotator's output with that annotator's validation labels;
    `val_gold_accuracy` the consensus with the validation items' gold. `test_accuracy` (the
    consensus against the test items' gold) is measured once, on the kept epoch only: it is None
    in the per-epoch history, so no test label can reach selection.
    """

    val_loss: float | None = None
    val_accuracy: float | None = None
    val_accuracy_per_annotator: dict[str, float | None] = {}
    val_accuracy_annotator_mean: float | None = None
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
    """The annotator model's kept-epoch metrics (flat), the compared heads' under `heads` and each
    baseline's under its name.

    With a model, `mv` / `ds` are the baseline classifiers (`BestMetrics`, None when not trained);
    without features they are the aggregators' report (`AggregatorMetrics`) and the model fields
    are None.
    """

    best_epoch: int | None = None
    epochs: int | None = None
    heads: dict[str, BestMetrics] = {}
    mv: BestMetrics | AggregatorMetrics | None = None
    ds: BestMetrics | AggregatorMetrics | None = None

    def baselines(self) -> dict[str, BestMetrics | AggregatorMetrics]:
        """The baselines (or aggregators) present, by name."""
        return {name: m for name, m in (("mv", self.mv), ("ds", self.ds)) if m is not None}

    def models(self, main: str = "model") -> dict[str, EpochMetrics]:
        """Every trained model's kept-epoch metrics: the annotator model (as `main`), the compared
        heads, the baseline classifiers (aggregators of a label-only dataset are not models)."""
        out: dict[str, EpochMetrics] = {main: self, **self.heads}
        out.update({k: m for k, m in self.baselines().items() if isinstance(m, EpochMetrics)})
        return out


class MeanSd(ResultModel):
    """A metric over seeds: mean, sample standard deviation (None for one seed) and count."""

    mean: float | None
    sd: float | None
    n: int


class SeedRun(ResultModel):
    """One seed's training in a multi-seed run: its run folder, model and kept-epoch metrics."""

    seed: int
    key: str
    model_dir: str | None
    checkpoint_dir: str | None
    history_path: str | None
    epochs: int
    best_epoch: int | None
    resumed_from_epoch: int | None = None
    seconds: float | None = None
    metrics: TrainMetrics


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
    split: str | None = None  # the split used: data, random or none
    selection: str | None = None  # how the kept epoch was chosen: gold, crowd or last
    n_val_gold_frames: int | None = None
    seed: int | None = None  # the seed whose model is saved (predict and analyze use it): the first
    test_accuracy: dict[str, float | None] = {}  # per model, on the test items' gold (mean over seeds)
    seeds: list[SeedRun] = []  # every seed's run (one entry per seed, also for one seed)
    summary: dict[str, dict[str, MeanSd]] = {}  # model -> metric -> mean and sd over the seeds
    metrics: TrainMetrics  # the saved seed's metrics


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
