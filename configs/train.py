"""The `train:` section of a pipeline config.

Every model mirrors an object it builds: `encoder` builds the encoder (`tasks.encoders`), `head`
the annotator head (one section per head registered in `configs.heads`), `optim` the optimiser and the
stopping rule, `loader` the chunked Zarr batches (`tasks.loader`), `split` the validation split.
Every field has a default, so a config without a `train:` section is valid.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

from pydantic import AfterValidator, BeforeValidator, Field, create_model, model_validator

from configs.base import Strict, resolve_path
from configs.heads import HEADS
from configs.inputs import MAX_SEED


def _is_file(path: Path) -> Path:
    if not Path(path).is_file():
        raise ValueError(f"file not found: {path}")
    return Path(path).resolve()


WeightsPath = Annotated[Path, BeforeValidator(resolve_path), AfterValidator(_is_file)]
"""A weights file that must exist, relative to the config file's folder."""


class MLPConfig(Strict):
    """`tasks.encoders.MLPEncoder`: per-frame (per-item) features through a small MLP."""

    hidden: int = Field(128, gt=0, description="width of the hidden layers")
    layers: int = Field(2, ge=1, description="hidden layers")


class TemporalConfig(Strict):
    """`tasks.encoders.TemporalConvEncoder`: 1-D convolutions over a window around each frame."""

    context_frames: int = Field(31, ge=1, description="window length, odd: the frame and (n-1)/2 either side")
    channels: int = Field(48, gt=0)
    blocks: int = Field(4, ge=1, description="residual blocks (dilations spread the window over them)")
    velocity: bool = Field(True, description="also feed each feature's central difference, standardised")

    @model_validator(mode="after")
    def _odd(self) -> TemporalConfig:
        if self.context_frames % 2 != 1:
            raise ValueError("context_frames must be odd (the frame plus the same context on each side)")
        return self


class EncoderConfig(Strict):
    """Which encoder, its size, and whether its weights are loaded and frozen.

    `kind: auto` picks `temporal` for sequences longer than one frame, else `mlp`. `frozen: true`
    without `weights` is the frozen randomly initialised baseline; `weights` loads a state dict
    (`torch.load(..., weights_only=True)`) saved from an encoder of the same config, e.g. a
    self-supervised one.
    """

    kind: Literal["auto", "mlp", "temporal"] = "auto"
    dim: int = Field(64, gt=0, description="embedding size per frame")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    frozen: bool = False
    weights: WeightsPath | None = None
    mlp: MLPConfig = MLPConfig()
    temporal: TemporalConfig = TemporalConfig()


class HeadBase(Strict):
    """The annotator-aware head trained on the encoder: `kind` (a name registered in
    `configs.heads.HEADS`) and one options section per registered head, named after it
    (`multi_annotator: {...}`, `conal: {...}`); the sections of the heads not chosen keep their
    defaults and are ignored."""

    kind: Annotated[str, AfterValidator(HEADS.check)] = "multi_annotator"

    def options(self) -> Strict:
        """The chosen head's options section."""
        section: Strict = getattr(self, self.kind)
        return section

    def with_options(self, options: Mapping[str, Any]) -> Self:  # JSON boundary: a head's spec options
        """This config with the chosen head's section replaced (`AnnotatorHead.spec_options()`)."""
        return self.model_copy(update={self.kind: HEADS[self.kind].options.model_validate(dict(options))})


if TYPE_CHECKING:
    HeadConfig = HeadBase
else:  # one field per registered head: a new head needs no edit here
    HeadConfig = create_model("HeadConfig", __base__=HeadBase, __module__=__name__, __doc__=HeadBase.__doc__,
                              **{entry.name: (entry.options, entry.options()) for entry in HEADS})


class OptimConfig(Strict):
    """AdamW with a one-cycle schedule over `max_epochs`, gradient clipping, early stopping on the
    validation loss."""

    lr: float = Field(5e-3, gt=0, description="peak learning rate")
    schedule: Literal["onecycle", "constant"] = "onecycle"
    warmup: float = Field(0.1, ge=0.0, lt=1.0, description="share of max_epochs spent warming up")
    weight_decay: float = Field(1e-4, ge=0)
    batch_frames: int | None = Field(
        None, gt=0, description="frames per step, rounded to whole crops; default 2048 for sequences, 64 for items")
    max_epochs: int = Field(40, ge=1)
    patience: int = Field(5, ge=1, description="epochs without improvement before stopping")
    min_delta: float = Field(1e-4, ge=0, description="smallest validation-loss drop that counts")
    grad_clip: float | None = Field(1.0, gt=0)


class LoaderConfig(Strict):
    """How batches are cut from the Zarr chunks."""

    crop_frames: int = Field(128, gt=0, description="frames per crop of a sequence (items: 1)")
    buffer_chunks: int = Field(4, ge=1, description="chunks shuffled together")


class SplitConfig(Strict):
    """Validation split by sequence (an item is a one-frame sequence)."""

    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)


class TrainConfig(Strict):
    """How the encoder and the annotator heads are trained."""

    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mixed_precision: bool = Field(True, description="bfloat16 autocast on CUDA (ignored on the CPU)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's)")
    deterministic: bool = Field(True, description="torch deterministic algorithms")
    encoder: EncoderConfig = EncoderConfig()
    head: HeadConfig = HeadConfig()
    baselines: list[Literal["mv", "ds"]] = Field(
        ["mv", "ds"], description="classifiers on the same encoder trained on aggregated labels")
    optim: OptimConfig = OptimConfig()
    loader: LoaderConfig = LoaderConfig()
    split: SplitConfig = SplitConfig()
    log_every_s: float = Field(10.0, gt=0, description="seconds between progress lines")
