"""Self-supervised pretraining of an encoder with SimCLR's contrastive loss (Chen et al. 2020).

Each step draws `batch` anchor frames (items), makes two random views of each (`tasks.augment`),
encodes them, maps them through a small projection head and minimises NT-Xent: each view must
pick its partner out of the 2N - 1 other views. Only the features are used, so unlabelled frames
count as much as labelled ones. The encoder (without the projection head) is what is kept: its
state dict loads into `train.encoder.weights` for fine-tuning, and the probes read it.

Reading goes through `tasks.loader` (chunks in random order, one-frame crops with their context),
so a store far larger than memory pretrains the same way. A checkpoint after every epoch lets a
retry resume where a crash stopped it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from configs.probe import SimCLRConfig
from configs.train import TrainConfig
from storage.dataset_store import DatasetStore
from storage.files import atomic_write_json
from storage.model_store import atomic_save
from storage.results.probe import SimCLREpoch, SimCLRSummary
from tasks.augment import sequence_view, vector_view
from tasks.encoders import Encoder, build_encoder, context_frames_each_side, resolve_kind
from tasks.loader import ChunkReader, cut_crops, iter_batches, scan_features
from tasks.train import (
    adamw,
    autocast_for,
    epoch_seed,
    initial_encoder,
    one_cycle,
    pick_device,
    set_determinism,
)

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
WEIGHTS = "encoder.pt"
SUMMARY = "summary.json"


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent: mean cross-entropy of finding each view's partner among the 2N - 1 other views.

    Computed in float32 on L2-normalised rows (zero and huge rows stay finite), with each view's
    similarity to itself removed by -inf before a log-sum-exp, so no exp overflows whatever the
    temperature.

    >>> z = torch.eye(4)  # partners identical, the others orthogonal: -2 + log(e^2 + 6)
    >>> round(float(nt_xent(z, z, 0.5)), 4)
    0.5944
    """
    n = z1.shape[0]
    z = torch.cat([z1, z2]).float()
    z = z / z.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)  # the norm of a huge row would overflow
    z = F.normalize(z, dim=1, eps=1e-8)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, partner)


class ProjectionHead(nn.Module):
    """dim -> dim -> projection_dim MLP between the encoder and the loss (discarded after training)."""

    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, out))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z)


def simclr_key(version: str, train: TrainConfig, config: SimCLRConfig, seed: int, held_out: np.ndarray) -> str:
    """Folder key: dataset version plus a hash of every setting that changes the encoder: its
    architecture, the loader, device and determinism settings, SimCLR's own, and the split."""
    used = train.model_dump(mode="json", include={"encoder", "loader", "device", "mixed_precision", "threads",
                                                  "deterministic"})
    used["encoder"] = {k: v for k, v in used["encoder"].items() if k not in ("weights", "frozen")}  # overridden
    settings = {"train": used, "simclr": config.model_dump(mode="json"), "seed": seed,
                "held_out": hashlib.sha256(np.packbits(held_out).tobytes()).hexdigest()}
    return f"{version}-{hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]}"


def pretrain_simclr(store: DatasetStore, train: TrainConfig, config: SimCLRConfig, allowed: np.ndarray,
                    folder: Path, seed: int = 0) -> SimCLRSummary:
    """Pretrain the `train.encoder` architecture on the frames where `allowed` is true.

    Writes `encoder.pt` (the encoder's state dict) and `summary.json` to `folder`; a finished
    folder is returned as it is, an interrupted one resumes from its last epoch.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / SUMMARY).is_file() and (folder / WEIGHTS).is_file():
        log.info("SimCLR encoder already pretrained in %s", folder)
        return SimCLRSummary.model_validate_json((folder / SUMMARY).read_text())
    t_start = time.perf_counter()
    device = pick_device(train)
    set_determinism(train, device)
    offsets = store.offsets
    longest = int(np.diff(offsets).max())
    sequences = longest > 1
    kind = resolve_kind(train.encoder, longest)
    enc_cfg = train.encoder.model_copy(update={"weights": None, "frozen": False})
    context = context_frames_each_side(enc_cfg, kind)
    shift = config.augment.time_shift if sequences else 0
    scan = scan_features(store.features, offsets, context + shift, allowed)
    torch.manual_seed(seed)
    encoder = initial_encoder(enc_cfg, scan, kind).to(device)
    head = ProjectionHead(encoder.dim, config.projection_dim).to(device)
    params = [*encoder.parameters(), *head.parameters()]
    optimizer = adamw(params, config.lr, config.weight_decay)
    mean = torch.as_tensor(scan.mean, dtype=torch.float32)
    std = torch.as_tensor(np.maximum(scan.std, 1e-6), dtype=torch.float32)
    assert scan.diff_std is not None  # a full scan always measures it
    motion = torch.as_tensor(np.maximum(scan.diff_std, 1e-6), dtype=torch.float32)

    history: list[SimCLREpoch] = []
    start = 0
    if (folder / CHECKPOINT).is_file():
        ckpt = torch.load(folder / CHECKPOINT, map_location=device, weights_only=True)
        encoder.load_state_dict(ckpt["encoder"])
        head.load_state_dict(ckpt["head"])
        optimizer.load_state_dict(ckpt["optimizer"])
        history = [SimCLREpoch.model_validate(h) for h in ckpt["history"]]
        start = int(ckpt["epoch"]) + 1
        log.info("SimCLR: resuming after epoch %d from %s", start, folder)

    reader = ChunkReader(store.features, store.n_frames, scan)
    candidates = np.flatnonzero(allowed)
    per_epoch = min(len(candidates), config.anchors_per_epoch or len(candidates))
    steps = max(1, -(-per_epoch // config.batch))
    last_log = time.perf_counter()
    for epoch in range(start, config.epochs):
        t0 = time.perf_counter()
        rng = np.random.default_rng([seed, epoch, 11])
        keep = np.zeros(store.n_frames, bool)
        keep[rng.choice(candidates, size=per_epoch, replace=False)] = True
        crops = cut_crops(offsets, scan.chunk, 1, keep)
        gen = torch.Generator().manual_seed(epoch_seed(seed, epoch, 13))
        torch.manual_seed(epoch_seed(seed, epoch, 17))  # dropout: a resumed run draws what an uninterrupted one does
        encoder.train()
        head.train()
        total, count = 0.0, 0
        batches = iter_batches(reader, crops, offsets, 1, config.batch, train.loader.buffer_chunks, rng)
        for step, batch in enumerate(batches):
            if len(batch.x) < 2:
                continue
            x = torch.from_numpy(batch.x)
            if sequences:
                v1, v2 = (sequence_view(x, context, mean, motion, config.augment, gen) for _ in range(2))
            else:
                v1, v2 = (vector_view(x, std, config.augment, gen) for _ in range(2))
            for group in optimizer.param_groups:
                group["lr"] = one_cycle((epoch + step / steps) / config.epochs, config.lr, config.warmup)
            with autocast_for(device, train):
                z1, z2 = (head(encoder(v.to(device))[:, 0]) for v in (v1, v2))
                loss = nt_xent(z1, z2, config.temperature)  # float32 inside
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            total += float(loss.detach()) * len(batch.x)
            count += len(batch.x)
            now = time.perf_counter()
            if now - last_log >= train.log_every_s:
                rate = count / max(now - t0, 1e-9)
                log.info("SimCLR epoch %d/%d: %d/%d anchors, %.0f anchors/s, epoch ETA %.0f s", epoch + 1,
                         config.epochs, count, per_epoch, rate, (per_epoch - count) / max(rate, 1e-9))
                last_log = now
        seconds = time.perf_counter() - t0
        history.append(SimCLREpoch(epoch=epoch, loss=total / max(count, 1), seconds=seconds))
        atomic_save({"encoder": encoder.state_dict(), "head": head.state_dict(), "optimizer": optimizer.state_dict(),
                     "epoch": epoch, "history": [h.model_dump() for h in history]}, folder / CHECKPOINT)
        left = (config.epochs - epoch - 1) * float(np.mean([h.seconds for h in history]))
        log.info("SimCLR epoch %d/%d in %.1f s (%.0f anchors/s): NT-Xent %.4f; ETA %.0f s", epoch + 1,
                 config.epochs, seconds, count / max(seconds, 1e-9), history[-1].loss, left)

    atomic_save({k: v.detach().cpu() for k, v in encoder.state_dict().items()}, folder / WEIGHTS)
    summary = SimCLRSummary(weights=str(folder / WEIGHTS), encoder=kind, context_frames=2 * context + 1,
                            device=device, epochs=config.epochs, anchors_per_epoch=per_epoch,
                            resumed_from_epoch=start or None, history=history,
                            final_loss=history[-1].loss if history else None,
                            chance_loss=float(np.log(2 * config.batch - 1)), seconds=time.perf_counter() - t_start)
    atomic_write_json(folder / SUMMARY, summary.model_dump(mode="json"), indent=2)
    return summary


def load_pretrained(weights: Path, train: TrainConfig, n_features: int, kind: str) -> Encoder:
    """The pretrained encoder, frozen (eval mode, no gradients)."""
    cfg = train.encoder.model_copy(update={"weights": Path(weights), "frozen": True})
    return build_encoder(cfg, n_features, kind=kind)
