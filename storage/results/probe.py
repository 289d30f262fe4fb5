"""What `annostyle probe` returns: the SimCLR pretraining and the probes of every encoder and target.

Field names are the `--json` keys documented in the README ("annostyle probe"); `summary.json`
in the probe's outputs folder is `ProbeResult.to_json()`, and a pretraining folder's
`summary.json` is a `SimCLRSummary`.
"""

from __future__ import annotations

from storage.results import ResultModel, StageResult


class SimCLREpoch(ResultModel):
    """One pretraining epoch: its mean NT-Xent over the anchors and its duration."""

    epoch: int
    loss: float
    seconds: float


class SimCLRSummary(ResultModel):
    """A finished SimCLR pretraining, as its folder's `summary.json` holds it."""

    weights: str
    """The encoder's state dict (`encoder.pt`), loadable as `train.encoder.weights`."""
    encoder: str
    """The encoder kind (`temporal`, `mlp`, ...)."""
    context_frames: int
    device: str
    epochs: int
    anchors_per_epoch: int
    resumed_from_epoch: int | None
    history: list[SimCLREpoch]
    final_loss: float | None
    chance_loss: float
    """NT-Xent of an encoder that knows nothing: log(2 * batch - 1)."""
    seconds: float


class SimCLRResult(SimCLRSummary):
    """The pretraining as the probe stage used it: the summary plus where and on what it ran."""

    key: str
    """The folder key (`<version>-<hash of the settings and the split>`)."""
    folder: str
    version: str
    """The dataset version pretrained on."""
    n_frames: int
    """Frames it could draw from (every frame outside the held-out sequences)."""


class ProbeInterval(ResultModel):
    """95% bootstrap intervals (resampling held-out sequences); None when `linear.bootstrap` is 0."""

    accuracy: list[float] | None
    mutual_information: list[float] | None


class TargetProbe(ResultModel):
    """One encoder probed for one target."""

    accuracy: float
    chance: float
    """Accuracy of always answering the most frequent training label."""
    entropy: float
    """H(Y) of the held-out labels, nats."""
    cross_entropy: float
    mutual_information: float
    """The lower bound H(Y) - CE, nats."""
    n_train: int
    n_test: int
    n_test_groups: int
    interval: ProbeInterval
    few_shot: dict[str, float | None]
    """Accuracy per share of the training labels (`"0.1"`); None when no draw had two classes."""


class ProbeFrames(ResultModel):
    """Frames drawn on each side of the split."""

    train: int
    test: int


class ProbeResult(StageResult):
    """Every encoder of `probe.encoders` probed for every target that can be probed."""

    dataset: str
    version: str
    store: str
    encoder_kind: str
    encoders: list[str]
    targets: list[str]
    """The targets probed (those of `probe.targets` not skipped)."""
    skipped_targets: dict[str, str]
    """Target -> why it could not be probed."""
    probe_accuracy: dict[str, dict[str, float]]
    """Encoder -> target -> held-out accuracy."""
    mutual_information: dict[str, dict[str, float]]
    """Encoder -> target -> MI lower bound (nats)."""
    chance: dict[str, float]
    entropy: dict[str, float]
    results: dict[str, dict[str, TargetProbe]]
    """Encoder -> target -> everything measured."""
    n_probe_frames: ProbeFrames
    held_out_sequences: int
    model_dirs: dict[str, str]
    """`supervised` / `simclr_finetuned` -> the trained model folder probed."""
    simclr: SimCLRResult | None
    model_run_ids: dict[str, str | None]
    """Model -> the MLflow run that trained it."""
    outputs: str
    """The folder with `probe_table.csv`, `summary.json` and `figures/`."""
    seconds: float
