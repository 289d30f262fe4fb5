"""Random views for contrastive pretraining, per data kind.

Sequences (frames with temporal context): each view of an anchor frame is a window centred up
to `time_shift` frames from it (so frames up to twice that apart are positives), each scaled about its own mean,
jittered frame by frame, and with some keypoints hidden for the whole window. Feature vectors
(items): Gaussian noise and feature dropout, where a dropped feature takes the value of the same
feature of another item in the batch, so its distribution stays the same (zeros would be an easy
tell that the encoder could learn instead of the content).

Scales come from the encoder's own standardisation statistics: jitter is in units of each
feature's frame-to-frame motion (`motion`, the SD of its central difference; noise on the scale
of the positions themselves would drown the motion that tells behaviours apart), noise in units
of the feature's SD (`std`); a hidden keypoint takes the feature's mean (`mean`).
"""

from __future__ import annotations

import torch

from configs.probe import AugmentConfig


def sequence_view(x: torch.Tensor, context: int, mean: torch.Tensor, motion: torch.Tensor, config: AugmentConfig,
                  generator: torch.Generator) -> torch.Tensor:
    """One view of windows `x` (B, 2 * (context + time_shift) + 1, F): (B, 2 * context + 1, F).

    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(4, 2 * (15 + 3) + 1, 28)
    >>> sequence_view(x, 15, torch.zeros(28), torch.ones(28), AugmentConfig(time_shift=3), g).shape
    torch.Size([4, 31, 28])
    """
    b, width, f = x.shape
    shift = config.time_shift
    if width != 2 * (context + shift) + 1:
        need = 2 * (context + shift) + 1
        raise ValueError(f"windows of {width} frames; need 2 * (context + time_shift) + 1 = {need}")
    offset = torch.randint(0, 2 * shift + 1, (b,), generator=generator)
    rows = offset[:, None] + torch.arange(2 * context + 1)[None, :]
    view = torch.gather(x, 1, rows[:, :, None].expand(-1, -1, f))
    if config.scaling:
        centre = view.mean(dim=1, keepdim=True)
        scale = 1 + config.scaling * (2 * torch.rand((b, 1, 1), generator=generator) - 1)
        view = centre + (view - centre) * scale
    if config.jitter:
        view = view + config.jitter * motion * torch.randn(view.shape, generator=generator)
    if config.keypoint_dropout:
        k = config.keypoint_size
        n_points = -(-f // k)
        hidden = torch.rand((b, 1, n_points), generator=generator) < config.keypoint_dropout
        hidden = hidden.repeat_interleave(k, dim=2)[:, :, :f]
        view = torch.where(hidden, mean, view)
    return view


def vector_view(x: torch.Tensor, std: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """One view of items `x` (B, 1, F): noise and feature dropout (values from other items).

    >>> g = torch.Generator().manual_seed(0)
    >>> vector_view(torch.randn(8, 1, 64), torch.ones(64), AugmentConfig(), g).shape
    torch.Size([8, 1, 64])
    """
    b = x.shape[0]
    view = x
    if config.feature_dropout:
        donor = torch.randint(0, b, x.shape, generator=generator)
        other = torch.gather(x, 0, donor)
        dropped = torch.rand(x.shape, generator=generator) < config.feature_dropout
        view = torch.where(dropped, other, view)
    if config.noise:
        view = view + config.noise * std * torch.randn(view.shape, generator=generator)
    return view
