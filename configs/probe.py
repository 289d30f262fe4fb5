"""The `probe:` section of a pipeline config: how good is an encoder's representation?

`simclr` builds the self-supervised encoder (`tasks.simclr`), its `augment` the views
(`tasks.augment`); `linear` the linear probes and the mutual-information bounds
(`tasks.probe`). The encoders compared share the config's `train.encoder` architecture.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from configs.base import Strict
from configs.inputs import MAX_SEED

EncoderName = Literal["raw", "random", "supervised", "simclr", "simclr_finetuned"]
TargetName = Literal["gold", "consensus", "annotator", "shuffled"]


class AugmentConfig(Strict):
    """Random views of a window (sequences) or of an item's feature vector.

    Scales are relative to each feature's own spread (see `tasks.augment`), so one config suits
    pixels and keypoint coordinates alike.
    """

    jitter: float = Field(0.5, ge=0, description="sequences: Gaussian noise per frame and feature, in units of the "
                                                 "feature's frame-to-frame motion (SD of its central difference)")
    scaling: float = Field(0.1, ge=0, lt=1,
                           description="sequences: the window scaled about its mean by U(1-s, 1+s)")
    time_shift: int = Field(8, ge=0, description="sequences: each view is centred up to this many frames from the "
                                                "anchor, so the two views up to twice that apart")
    keypoint_dropout: float = Field(0.05, ge=0, lt=1,
                                    description="sequences: share of keypoints hidden for the whole window")
    keypoint_size: int = Field(2, ge=1, description="consecutive features that make one keypoint (x, y: 2)")
    noise: float = Field(0.1, ge=0, description="feature vectors: Gaussian noise, in feature SDs")
    feature_dropout: float = Field(
        0.3, ge=0, lt=1,
        description="feature vectors: share of features replaced by the same feature of another item in the "
                    "batch (keeps each feature's distribution, unlike zeroing)")


class SimCLRConfig(Strict):
    """Contrastive pretraining (NT-Xent over 2N views) of the `train.encoder` architecture."""

    temperature: float = Field(0.5, gt=0)
    projection_dim: int = Field(64, gt=0, description="output of the projection head the loss sees")
    batch: int = Field(256, ge=2, description="anchors (frames or items) per step: 2 x batch views")
    epochs: int = Field(20, ge=1)
    anchors_per_epoch: int | None = Field(
        10_000, gt=0, description="frames drawn per epoch (None: every frame once)")
    lr: float = Field(3e-3, gt=0, description="peak learning rate (one-cycle)")
    warmup: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    augment: AugmentConfig = AugmentConfig()


class LinearProbeConfig(Strict):
    """Logistic regression on frozen, standardised embeddings; held-out sequences never mixed in."""

    c: list[float] = Field([1e-3, 1e-2, 1e-1, 1.0, 10.0], min_length=1,
                           description="inverse L2 strengths tried; the best held-in log-loss wins (grouped CV)")
    folds: int = Field(3, ge=2, description="cross-validation folds over training sequences (items) to pick c")
    max_iter: int = Field(300, ge=10)
    max_train_frames: int = Field(5_000, ge=10, description="frames drawn from the training sequences")
    max_test_frames: int = Field(5_000, ge=10, description="frames drawn from the held-out sequences")
    fractions: list[float] = Field([0.01, 0.1, 1.0], min_length=1,
                                   description="shares of the training labels for the few-shot curve")
    repeats: int = Field(3, ge=1, description="draws averaged per few-shot fraction below 1")
    bootstrap: int = Field(200, ge=0, description="resamples of held-out sequences (items) for the intervals")

    @field_validator("fractions")
    @classmethod
    def _shares(cls, fractions: list[float]) -> list[float]:
        if any(not 0 < f <= 1 for f in fractions):
            raise ValueError("fractions must lie in (0, 1]")
        return sorted(set(fractions))


class ProbeConfig(Strict):
    """Which encoders are probed for which targets.

    Encoders: `raw` the frame's (item's) own features; `random` the `train.encoder` architecture
    frozen at its random initialisation; `supervised` the encoder of the trained annotator model
    (`annostyle train`); `simclr` the self-supervised one; `simclr_finetuned` the SimCLR encoder
    fine-tuned with the annotator head under the `train:` settings.
    """

    seed: int = Field(0, ge=0, le=MAX_SEED)
    encoders: list[EncoderName] = Field(["raw", "random", "supervised", "simclr"], min_length=1)
    targets: list[TargetName] = Field(
        ["gold", "consensus", "annotator", "shuffled"], min_length=1,
        description="gold: the gold label; consensus: majority vote of the crowd; annotator: who labelled "
                    "(frames with exactly one annotator); shuffled: the consensus permuted at random, a control")
    simclr: SimCLRConfig = SimCLRConfig()
    linear: LinearProbeConfig = LinearProbeConfig()
    workers: int | None = Field(
        None, ge=1, description="processes that fit the probes (one per encoder and target) side by side "
        "(default: one per usable core, at most one per probe); the results are the same as one by one")
