"""Encoders: per-frame features (with their temporal context) to one embedding per frame.

Every encoder takes `x` of shape (batch, frames + 2 * context, n_features) and returns
(batch, frames, dim): the first and last `context` input frames are context only. A frame's
embedding depends on exactly the window [t - context, t + context] and nothing else (the
temporal encoder uses unpadded convolutions), so cutting a sequence into crops, or predicting a
range in pieces, gives the same embeddings as one pass. Windows never cross a sequence border:
`tasks.loader` pads at sequence edges before the encoder sees them.

The seam for pretrained encoders: `build_encoder(config, n_features)` builds the module from the
config, and `config.weights` loads a state dict saved from an encoder of the same config.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from configs.train import EncoderConfig

log = logging.getLogger(__name__)


class Dropout(nn.Dropout):
    """`nn.Dropout` whose mask comes from `torch.rand` on the CPU: torch's CPU kernel draws its
    Bernoulli mask about 2x slower (466 against 230 us for 64 x 512 floats, one thread), which
    was a fifth of a LabelMe seed's training time. Elsewhere (CUDA, evaluation) it is torch's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or self.p >= 1.0 or x.device.type != "cpu":
            return super().forward(x)
        return x * (torch.rand_like(x) >= self.p) * (1.0 / (1.0 - self.p))


class Standardize(nn.Module):
    """Per-feature (x - mean) / std with the statistics as buffers (saved with the weights)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))

    def set_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.std.copy_(torch.as_tensor(np.maximum(std, 1e-6), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Encoder(nn.Module):
    """The base of every encoder: `context` frames each side, `dim` outputs per frame."""

    context: int
    dim: int

    def __init__(self, n_features: int, dim: int, context: int) -> None:
        super().__init__()
        self.n_features, self.dim, self.context = n_features, dim, context
        self.frozen = False
        self.standardize = Standardize(n_features)

    def freeze(self) -> Encoder:
        """No gradients and always in eval mode (no dropout): a fixed feature map."""
        self.frozen = True
        self.requires_grad_(False)
        return self.train(False)

    def train(self, mode: bool = True) -> Encoder:
        return super().train(mode and not self.frozen)


class MLPEncoder(Encoder):
    """An MLP applied to every frame (item) on its own: no temporal context.

    >>> enc = MLPEncoder(64, dim=32, hidden=128, layers=2)
    >>> enc(torch.zeros(5, 1, 64)).shape
    torch.Size([5, 1, 32])
    """

    def __init__(self, n_features: int, dim: int = 64, hidden: int = 128, layers: int = 2,
                 dropout: float = 0.1, input_dropout: float = 0.0) -> None:
        super().__init__(n_features, dim, context=0)
        # dropout on the standardised inputs (a dropped feature reads as its mean): a regulariser
        # for wide pretrained features such as VGG's 512 (no parameters: state dicts unchanged)
        self.input_drop = Dropout(input_dropout)
        parts: list[nn.Module] = []
        width = n_features
        for _ in range(layers):
            parts += [nn.Linear(width, hidden), nn.GELU(), Dropout(dropout)]
            width = hidden
        parts += [nn.Linear(width, dim), nn.LayerNorm(dim)]
        self.body = nn.Sequential(*parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.input_drop(self.standardize(x)))


def dilations(context: int, blocks: int) -> list[int]:
    """Dilations of `blocks` kernel-3 convolutions whose receptive field is exactly 2*context+1.

    Doubling dilations (1, 2, 4, ...) scaled to sum to `context`; a 0 is a pointwise block.

    >>> dilations(15, 4), dilations(10, 3), dilations(2, 4)
    ([1, 2, 4, 8], [1, 3, 6], [0, 0, 1, 1])
    """
    weights = np.power(2.0, np.arange(blocks))
    raw = context * weights / weights.sum()
    out = np.floor(raw).astype(int)
    # hand the remainder to the blocks that lost most to rounding, deepest first on ties
    for i in np.argsort(-(raw - out) - 1e-9 * np.arange(blocks), kind="stable")[: context - out.sum()]:
        out[i] += 1
    return sorted(out.tolist())


class _Block(nn.Module):
    """LayerNorm -> GELU -> dilated kernel-3 conv (unpadded) -> GELU -> pointwise conv, residual."""

    def __init__(self, channels: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.trim = dilation
        self.norm = nn.LayerNorm(channels)
        kernel = 3 if dilation else 1
        self.conv = nn.Conv1d(channels, channels, kernel, dilation=max(dilation, 1))
        self.mix = nn.Conv1d(channels, channels, 1)
        self.act = nn.GELU()
        self.drop = Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, C, T) -> (B, C, T - 2 * trim)
        y = self.norm(h.transpose(1, 2)).transpose(1, 2).contiguous()  # GELU's backward: 6x slower strided
        y = self.mix(self.drop(self.act(self.conv(self.act(y)))))
        inner = h[:, :, self.trim: h.shape[2] - self.trim] if self.trim else h
        return inner + y


class TemporalConvEncoder(Encoder):
    """A per-frame MLP stem, then residual 1-D convolutions over `context_frames` around every frame.

    With `velocity`, the stem also sees each feature's central difference (x[t+1] - x[t-1]) / 2,
    standardised by its own statistics: motion is often orders of magnitude smaller than position
    (the demo's attack jitter is about 1 % of the arena) and would take many epochs to amplify.
    The difference uses one frame of the window on each side.

    >>> enc = TemporalConvEncoder(28, dim=32, context_frames=31, channels=32, blocks=4)
    >>> enc.context, enc(torch.zeros(2, 100 + 30, 28)).shape
    (15, torch.Size([2, 100, 32]))
    """

    def __init__(self, n_features: int, dim: int = 64, context_frames: int = 31, channels: int = 48,
                 blocks: int = 4, dropout: float = 0.1, velocity: bool = True) -> None:
        super().__init__(n_features, dim, context=(context_frames - 1) // 2)
        self.velocity = velocity and self.context >= 1
        self.standardize_diff = Standardize(n_features)
        self.dilations = dilations(self.context - int(self.velocity), blocks)
        width = n_features * (2 if self.velocity else 1)
        self.inp = nn.Sequential(nn.Conv1d(width, channels, 1), nn.GELU(), nn.Conv1d(channels, channels, 1))
        self.blocks = nn.ModuleList(_Block(channels, d, dropout) for d in self.dilations)
        self.out_norm = nn.LayerNorm(channels)
        self.out = nn.Linear(channels, dim)
        self.out_ln = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.standardize(x)
        if self.velocity:
            diff = (x[:, 2:] - x[:, :-2]) / 2
            h = torch.cat([h[:, 1:-1], diff / self.standardize_diff.std], dim=-1)
        h = self.inp(h.transpose(1, 2))
        for block in self.blocks:
            h = block(h)
        h = self.out_norm(h.transpose(1, 2))
        return self.out_ln(self.out(torch.nn.functional.gelu(h)))


def resolve_kind(config: EncoderConfig, longest_sequence: int) -> str:
    """`auto` is `temporal` for sequences longer than one frame, else `mlp`."""
    if config.kind != "auto":
        return config.kind
    return "temporal" if longest_sequence > 1 else "mlp"


def context_frames_each_side(config: EncoderConfig, kind: str) -> int:
    """Frames of context either side of a frame that the encoder of `kind` reads."""
    return (config.temporal.context_frames - 1) // 2 if kind == "temporal" else 0


def build_encoder(config: EncoderConfig, n_features: int, kind: str | None = None) -> Encoder:
    """The encoder a config asks for; `config.weights` are loaded, `config.frozen` freezes it.

    `kind` overrides `config.kind` (e.g. the resolved `auto`). Loaded weights include the
    standardisation statistics they were trained with.
    """
    kind = kind or config.kind
    if kind == "mlp":
        enc: Encoder = MLPEncoder(n_features, config.dim, config.mlp.hidden, config.mlp.layers, config.dropout,
                                  config.input_dropout)
    elif kind == "temporal":
        t = config.temporal
        enc = TemporalConvEncoder(n_features, config.dim, t.context_frames, t.channels, t.blocks, config.dropout,
                                  t.velocity)
    else:
        raise ValueError(f"resolve encoder kind {kind!r} first (see resolve_kind)")
    if config.weights is not None:
        state = torch.load(config.weights, map_location="cpu", weights_only=True)
        enc.load_state_dict(state)
        log.info("loaded encoder weights from %s", config.weights)
    if config.frozen:
        enc.freeze()
    return enc
