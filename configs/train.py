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
    input_dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="dropout on the standardised input features (MLP encoder)")
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
    selection criterion (`train.select`) after `min_epochs`."""

    lr: float = Field(5e-3, gt=0, description="peak learning rate")
    schedule: Literal["onecycle", "constant"] = "onecycle"
    warmup: float = Field(0.1, ge=0.0, lt=1.0, description="share of max_epochs spent warming up")
    weight_decay: float = Field(1e-4, ge=0)
    batch_frames: int | None = Field(
        None, gt=0, description="frames per step, rounded to whole crops; default 2048 for sequences, 64 for items")
    max_epochs: int = Field(40, ge=1)
    patience: int = Field(10, ge=1, description="epochs without improvement before stopping")
    min_epochs: int | None = Field(
        None, ge=1, description="epochs before an epoch may be selected or training stop early; default: "
        "the end of the warm-up (onecycle) plus one, at least 1")
    min_delta: float = Field(1e-4, ge=0, description="smallest improvement of the criterion that counts")
    grad_clip: float | None = Field(1.0, gt=0)


class LoaderConfig(Strict):
    """How batches are cut from the Zarr chunks."""

    crop_frames: int = Field(128, gt=0, description="frames per crop of a sequence (items: 1)")
    buffer_chunks: int = Field(4, ge=1, description="chunks shuffled together")
    in_memory_mb: float = Field(
        2048.0, ge=0, description="features up to this size (MiB, float32) are read once into memory: items "
        "train from dense tensors on the device, batches by index; frames from an in-memory copy of the "
        "chunks; larger features are read chunk by chunk from Zarr every epoch (0: always from Zarr)")


class SplitConfig(Strict):
    """Which items train, which select the epoch, which are reported (an item is a one-frame sequence).

    - `auto`: `data` when the store holds the data's own split, else `random`;
    - `data`: the data's split (`configs.splits`): `train` items train, `valid` items only select
      (never trained on), `test` items only give the reported figure; items without a split value
      train when they carry crowd labels;
    - `random`: `val_fraction` of the crowd-labelled sequences, drawn with `split_seed` (not the
      initialisation seed, so seeds vary the initialisation only), select; test items are the
      data's `test` items and, when the data gives no split, the items with gold and no crowd label;
    - `none`: every crowd-labelled item trains for the fixed schedule (`max_epochs`), the last
      epoch is kept; test items as for `random`.
    """

    kind: Literal["auto", "data", "random", "none"] = "auto"
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="`random`: share of the sequences that validate")
    split_seed: int = Field(0, ge=0, le=MAX_SEED, description="`random`: the seed of the draw")


Selection = Literal["auto", "gold", "crowd", "last"]


class TrainConfig(Strict):
    """How the encoder and the annotator heads are trained, and which epoch is kept (`select`).

    `select`: `gold` keeps the epoch of highest consensus accuracy on the validation items' gold;
    `crowd` the epoch of lowest cross-entropy of the validation items' crowd labels under each
    model's annotator outputs, from `optim.min_epochs` on; `last` the last epoch of the schedule;
    `auto` is `gold` when the validation items carry gold, else `crowd`, and `last` with
    `split.kind: none`.
    """

    seed: int = Field(0, ge=0, le=MAX_SEED, description="initialisation (and dropout, shuffling) seed")
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] | None = Field(
        None, min_length=1, description="one model per seed in one command (overrides `seed`); the first "
        "seed's model is the one predict and analyze use; the summary gives each metric's mean and sd")
    select: Selection = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mixed_precision: bool = Field(True, description="bfloat16 autocast on CUDA (ignored on the CPU)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's)")
    seed_workers: int | None = Field(
        None, ge=1, description="processes that train `seeds` side by side on the CPU, each with its own copy "
        "of the in-memory features (default: as many as the cores hold at `threads` each and "
        "`loader.in_memory_mb` holds copies, at most one per seed; 1 when `threads` is unset or on CUDA); "
        "the models are the same as one after another")
    deterministic: bool = Field(True, description="torch deterministic algorithms")
    encoder: EncoderConfig = EncoderConfig()
    head: HeadConfig = HeadConfig()
    compare_heads: list[Annotated[str, AfterValidator(HEADS.check)]] = Field(
        [], description="further annotator heads trained beside `head.kind` in the same run, on the same "
        "batches, for the comparison table (their options: `head.<kind>`); only `head.kind` is saved")
    baselines: list[Literal["mv", "ds"]] = Field(
        ["mv", "ds"], description="classifiers on the same encoder trained on aggregated labels")
    optim: OptimConfig = OptimConfig()
    loader: LoaderConfig = LoaderConfig()
    split: SplitConfig = SplitConfig()
    log_every_s: float = Field(10.0, gt=0, description="seconds between progress lines")
    checkpoint_every_s: float = Field(
        30.0, ge=0, description="seconds between checkpoints (also after the last epoch); 0: after every epoch")

    def seed_list(self) -> list[int]:
        """The seeds trained: `seeds`, else [`seed`]."""
        return list(self.seeds) if self.seeds else [self.seed]
