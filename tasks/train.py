"""Training: the annotator-aware model, compared heads and the MV / DS baselines, on one store.

`train_model(config, layout)` is the stage function (no Prefect, no MLflow; `flows.train` wraps
it in a Prefect task and records the run). What it does:

1. opens the store at its latest version; a store without features gets no model: the crowd-kit
   aggregators' consensus is reported instead (`label_only_result`);
2. splits the items (sequences) by `train.split` (`split_frames`): the data's own split, a random
   one drawn with `split.split_seed`, or none. Validation items are never trained on; test items
   are read for nothing but the reported figure, once, at the end (`test_metrics`);
3. features that fit in `loader.in_memory_mb` are read once: items go to dense tensors on the
   device and batches are drawn by index (`MemoryFeed`); frames keep the crops and windows of the
   chunked loader on an in-memory copy. Larger features are read chunk by chunk from Zarr every
   epoch (`ChunkFeed`: chunks in random order, crops shuffled in a buffer of chunks);
4. trains the head of `train.head`, every head of `train.compare_heads` and one classifier per
   baseline, each on its own copy of the same encoder (same architecture, same initial weights),
   on the same batches;
5. after every epoch: evaluation on the validation items; the kept epoch is chosen by
   `train.select` (validation gold accuracy, held-out crowd-label likelihood after
   `optim.min_epochs`, or the last epoch), each model's kept weights are held, early stopping
   after `optim.patience` epochs without improvement; a checkpoint is written atomically to the
   run folder at most every `checkpoint_every_s` seconds and after the last epoch. The key is
   the dataset version plus a hash of the train config, so a rerun after a crash resumes from it.
   Shuffles are seeded by (seed, epoch) and dropout by (seed, epoch, step, model), so a resumed
   run equals an uninterrupted one (bit for bit on the CPU with the same thread count);
6. `train.seeds` trains one model per seed (each in its own run folder) on the same split; the
   first seed's annotator model is saved for predict and analyze, and the result holds every
   seed's metrics with their mean and standard deviation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
import torch.nn.functional as F

from configs.heads import HEADS
from configs.schema import PipelineConfig
from configs.splits import SPLIT_CODES
from configs.train import EncoderConfig, TrainConfig
from errors import InputError
from storage.dataset_store import DatasetStore
from storage.layout import RootLayout
from storage.model_store import History, ModelSpec, RunFolder, save_model
from storage.results.train import BestMetrics, EpochMetrics, MeanSd, SeedRun, TrainMetrics, TrainResult
from tasks.aggregate import CrowdAggregate, accuracy
from tasks.encoders import Encoder, TemporalConvEncoder, build_encoder, context_frames_each_side, resolve_kind
from tasks.heads import ClassifierHead, build_head, head_spec
from tasks.label_only import label_only_result
from tasks.loader import (
    ChunkReader,
    FeatureScan,
    cut_crops,
    iter_batches,
    keep_crops_with,
    scan_features,
)
from tasks.model import BaselineNet, CrowdNet
from tasks.workers import process_pool, results_in_order, torch_threads, usable_cores

log = logging.getLogger(__name__)

MAIN = "model"
"""The annotator model's name among the trainees (compared heads are named by kind, baselines by aggregator)."""
TRAINEE_IDS = {MAIN: 0, "mv": 1, "ds": 2}
"""Stable ids for per-trainee dropout seeds: a baseline's run does not depend on which heads train beside it."""


# --------------------------------------------------------------------------- set-up helpers
def train_key(version: str, config: TrainConfig) -> str:
    """Checkpoint key: dataset version plus a hash of every train setting that changes the result."""
    settings = config.model_dump(mode="json", exclude={"log_every_s", "checkpoint_every_s", "seed_workers"})
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return f"{version}-{digest}"


def seed_config(config: TrainConfig, seed: int) -> TrainConfig:
    """The config of one seed's training in a multi-seed run (its own key and run folder)."""
    return config.model_copy(update={"seed": seed, "seeds": None})


def result_key(version: str, config: TrainConfig) -> str:
    """The key of a run's result: the model's run folder for one seed, the multi-seed summary's otherwise."""
    seeds = config.seed_list()
    return train_key(version, seed_config(config, seeds[0]) if len(seeds) == 1 else config)


def pick_device(config: TrainConfig) -> str:
    if config.device == "cuda" and not torch.cuda.is_available():
        raise InputError("train.device", "device", "cuda", "no CUDA device is available here")
    if config.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return config.device


def set_determinism(config: TrainConfig, device: str) -> None:
    """Seeded, deterministic kernels; a fixed CPU thread count when asked (results depend on it)."""
    torch_threads(config.threads)
    if config.deterministic:
        if device == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(config.seed)


def split_sequences(offsets: np.ndarray, labelled_frames: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Validation sequences (bool per sequence): `fraction` of the labelled sequences, at random.

    >>> split_sequences(np.arange(11), np.ones(10, bool), 0.2, seed=0).sum()
    np.int64(2)
    """
    n_seq = len(offsets) - 1
    counts = np.add.reduceat(labelled_frames.astype(np.int64), offsets[:-1]) if n_seq else np.zeros(0)
    counts[np.diff(offsets) == 0] = 0
    labelled = np.flatnonzero(counts > 0)
    n_val = int(round(fraction * len(labelled)))
    n_val = min(max(n_val, 1 if len(labelled) > 1 else 0), max(len(labelled) - 1, 0))
    val = np.zeros(n_seq, bool)
    val[np.random.default_rng([seed, 1]).permutation(labelled)[:n_val]] = True
    return val


@dataclass(frozen=True)
class FrameSplit:
    """Training's split, as bools per frame (a sequence is never on both sides)."""

    train_frames: np.ndarray  # crowd-labelled frames that training uses
    val_frames: np.ndarray  # crowd-labelled validation frames (the crowd criterion)
    test_frames: np.ndarray  # test frames with gold (the reported figure only)
    train_sequences: np.ndarray  # the frame's sequence may train
    eval_sequences: np.ndarray  # the frame's sequence is a validation sequence or holds a test frame
    n_val_sequences: int
    val_gold_frames: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # validation frames with gold
    kind: str = "random"  # data, random or none


def _per_sequence_any(mask: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Bool per frame: the frame's sequence holds a frame where `mask` is true."""
    lengths = np.diff(offsets)
    if not len(lengths):
        return np.zeros(0, bool)
    starts = np.minimum(offsets[:-1], max(len(mask) - 1, 0))
    counts = np.add.reduceat(mask.astype(np.int64), starts) if len(mask) else np.zeros(len(lengths), np.int64)
    counts[lengths == 0] = 0
    return np.repeat(counts > 0, lengths)


def split_frames(labels: np.ndarray, gold: np.ndarray, offsets: np.ndarray, config: TrainConfig,
                 codes: np.ndarray | None = None, where: str = "train.split") -> FrameSplit:
    """The split `config.split` asks for, from the labels, the gold and the data's split codes.

    `codes` (int8 per frame, `configs.splits`; None or all -1: the data gives none). `data` needs
    codes (`auto` falls back to `random` without them); the data's `valid` items never train, its
    `test` items only give the reported figure. `random` draws `val_fraction` of the labelled
    sequences with `split_seed`; its test items are the data's `test` items and, where the data
    gives no split, items with gold and no crowd label. `none`: no validation.
    """
    n = len(gold)
    codes = np.full(n, -1, np.int8) if codes is None else np.asarray(codes)
    has_codes = bool((codes >= 0).any())
    kind = config.split.kind
    if kind == "auto":
        kind = "data" if has_codes else "random"
    if kind == "data" and not has_codes:
        raise InputError(where, "train.split.kind", "data", "the dataset gives no train/valid/test split; use "
                         "`random` or `none` (or `auto`)")
    labelled = np.asarray((labels >= 0).any(axis=1)) if labels.size else np.zeros(n, bool)
    known = gold >= 0
    test = known & ((codes == SPLIT_CODES["test"]) | ((codes < 0) & ~labelled))
    if kind == "data":
        valid = codes == SPLIT_CODES["valid"]
        val_seq_f = _per_sequence_any(valid, offsets)
    elif kind == "random":
        candidates = labelled & ~test
        val_seq = split_sequences(offsets, candidates, config.split.val_fraction, config.split.split_seed)
        val_seq_f = np.repeat(val_seq, np.diff(offsets)) | _per_sequence_any(
            (codes == SPLIT_CODES["valid"]) & ~labelled, offsets)  # gold-only valid items validate too
    else:
        val_seq_f = np.zeros(n, bool)
    test_seq = _per_sequence_any(test, offsets)
    train_seq = ~val_seq_f & ~test_seq if kind == "data" else ~val_seq_f
    n_val = int(len(np.unique(np.searchsorted(offsets, np.flatnonzero(val_seq_f), side="right")))) \
        if val_seq_f.any() else 0
    return FrameSplit(
        train_frames=labelled & train_seq & ~test, val_frames=labelled & val_seq_f & ~test,
        test_frames=test & ~val_seq_f, train_sequences=train_seq, eval_sequences=val_seq_f | test_seq,
        n_val_sequences=n_val, val_gold_frames=known & val_seq_f & ~test, kind=kind)


def selection_rule(config: TrainConfig, split: FrameSplit, where: str = "train.select") -> str:
    """The rule that picks the kept epoch: `gold`, `crowd` or `last` (`auto` resolved; see TrainConfig)."""
    rule = config.select
    if split.kind == "none":
        if rule in ("gold", "crowd"):
            raise InputError(where, "train.select", rule, "`train.split.kind: none` has no validation items")
        return "last"
    if rule == "auto":
        if split.val_gold_frames.any():
            return "gold"
        return "crowd" if split.val_frames.any() else "last"
    if rule == "gold" and not split.val_gold_frames.any():
        raise InputError(where, "train.select", "gold", "the validation items carry no gold label")
    if rule == "crowd" and not split.val_frames.any():
        raise InputError(where, "train.select", "crowd", "the validation items carry no crowd label")
    return rule


def min_epochs(config: TrainConfig) -> int:
    """Epochs before the crowd criterion may pick an epoch or training may stop: the configured
    value, else one past the end of the learning-rate warm-up."""
    opt = config.optim
    if opt.min_epochs is not None:
        return min(opt.min_epochs, opt.max_epochs)
    warm = math.ceil(opt.warmup * opt.max_epochs) if opt.schedule == "onecycle" else 0
    return min(opt.max_epochs, warm + 1)


# ------------------------------------------------------------------------------ trainees
@dataclass
class Trainee:
    """One network trained in the run: an annotator model or a baseline on aggregated labels."""

    name: str
    net: CrowdNet | BaselineNet
    optimizer: torch.optim.Optimizer
    target: np.ndarray | None = None  # baselines: one label per frame; None: the annotator matrix
    uid: int = 0  # the stable id of its dropout seeds
    best_score: float = -float("inf")  # the selection criterion, higher is better
    best_epoch: int = -1
    bad_epochs: int = 0
    stopped: bool = False
    epochs: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    target_t: torch.Tensor | None = None  # memory feed: training targets of every frame on the device
    has_target: np.ndarray | None = None  # memory feed: bool per frame, it has a training target (counted on the host)

    def state(self) -> dict[str, Any]:  # JSON boundary: checkpoint.pt (torch.save), this trainee
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "best_score": self.best_score, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "stopped": self.stopped, "epochs": self.epochs, "best_state": self.best_state}

    def load(self, state: dict[str, Any]) -> None:  # JSON boundary: checkpoint.pt (torch.load), this trainee
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        for key in ("best_score", "best_epoch", "bad_epochs", "stopped", "epochs", "best_state"):
            setattr(self, key, state[key])


# ------------------------------------------------------------------------------ the feeds
class Feed(Protocol):
    """Where batches come from: training batches of an epoch and the evaluation batches of a mask.

    A batch is (x, frames): x the encoder's input on the device, frames (n,) int64 the frame of
    every row of the encoder's flattened output, -1 for padding.
    """

    def train_batches(self, epoch: int, rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, np.ndarray]]: ...

    def eval_batches(self, mask: np.ndarray) -> Iterator[tuple[torch.Tensor, np.ndarray]]: ...

    def n_batches(self) -> int: ...


class MemoryFeed:
    """Item data in memory: one dense tensor of features on the device, batches by index.

    The encoder sees a one-frame sequence per item (a temporal encoder: the item repeated over its
    window, which is what the chunked loader's edge padding gives an item too).
    """

    def __init__(self, features: np.ndarray, train_frames: np.ndarray, batch: int, width: int, device: str) -> None:
        self.x = torch.from_numpy(np.ascontiguousarray(features.reshape(len(features), -1), dtype=np.float32)).to(device)
        self.train_idx = np.flatnonzero(train_frames)
        self.batch, self.width, self.device = batch, width, device

    def _x(self, idx: np.ndarray) -> torch.Tensor:
        rows = self.x[torch.from_numpy(idx).to(self.device)]
        return rows[:, None, :].expand(-1, self.width, -1) if self.width > 1 else rows[:, None, :]

    def n_batches(self) -> int:
        return max(1, -(-len(self.train_idx) // self.batch))

    def train_batches(self, epoch: int, rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        order = rng.permutation(self.train_idx)
        for i in range(0, len(order), self.batch):
            idx = order[i: i + self.batch]
            yield self._x(idx), idx

    def eval_batches(self, mask: np.ndarray) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        idx = np.flatnonzero(mask)
        step = max(self.batch, 4096)
        for i in range(0, len(idx), step):
            yield self._x(idx[i: i + step]), idx[i: i + step]


class InMemoryChunks:
    """A features array read once into memory, sliced like the Zarr array it came from (same chunks)."""

    def __init__(self, data: np.ndarray, chunks: tuple[int, ...]) -> None:
        self.data, self._chunks = data, chunks

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def chunks(self) -> tuple[int, ...]:
        return self._chunks

    def __getitem__(self, key: Any) -> Any:
        return self.data[key]


class ChunkFeed:
    """Frame data: crops of sequences, chunks in random order, crops shuffled in a buffer of chunks."""

    def __init__(self, data: Data, config: TrainConfig, device: str) -> None:
        self.data, self.config, self.device = data, config, device
        self.reader = ChunkReader(data.features, data.n_frames, data.scan)
        self.batch_crops = max(1, batch_frames(config, data.crop) // data.crop)
        self._n = max(1, -(-len(keep_crops_with(cut_crops(data.offsets, data.scan.chunk, data.crop,
                                                          data.split.train_sequences), data.split.train_frames))
                            // self.batch_crops))

    def n_batches(self) -> int:
        return self._n

    def train_batches(self, epoch: int, rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        d = self.data
        crops = keep_crops_with(cut_crops(d.offsets, d.scan.chunk, d.crop, d.split.train_sequences, rng),
                                d.split.train_frames)
        for batch in iter_batches(self.reader, crops, d.offsets, d.crop, self.batch_crops,
                                  self.config.loader.buffer_chunks, rng):
            yield torch.from_numpy(batch.x).to(self.device, non_blocking=True), batch.frames.reshape(-1)

    def eval_batches(self, mask: np.ndarray) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        d = self.data
        crops = keep_crops_with(cut_crops(d.offsets, d.scan.chunk, d.crop, d.split.eval_sequences), mask)
        batch_crops = max(1, batch_frames(self.config, d.crop) * 4 // d.crop)
        for batch in iter_batches(self.reader, crops, d.offsets, d.crop, batch_crops, 1, None):
            frames = batch.frames.reshape(-1)
            ok = frames >= 0
            ok[ok] = mask[frames[ok]]
            yield torch.from_numpy(batch.x).to(self.device), np.where(ok, frames, -1)


@dataclass
class Data:
    """Everything about the store that training keeps in memory (labels; features when they fit)."""

    annotators: list[str]
    labels: np.ndarray  # (n, R) int16
    gold: np.ndarray  # (n,) int16; read for validation frames in `evaluate`, for test frames in `test_metrics`
    offsets: np.ndarray
    split: FrameSplit
    crop: int
    context: int
    scan: FeatureScan
    features: Any  # the store's features array, or an in-memory copy (`InMemoryChunks`)
    memory: np.ndarray | None = None  # item features in memory: the memory feed
    n_frames: int = 0
    load_seconds: float = 0.0


def prepare(store: DatasetStore, config: TrainConfig, context: int, crop: int) -> Data:
    """Labels, gold, the split and the features (in memory when they fit) with their statistics."""
    t0 = time.perf_counter()
    labels, gold, offsets = store.read_labels(), store.read_gold(), store.offsets
    codes = store.read_split() if store.has_split else None
    split = split_frames(labels, gold, offsets, config, codes, where=store.uri)
    log.info("split (%s): %d training frames, %d validation frames (%d with gold; %d sequences), %d test frames",
             split.kind, split.train_frames.sum(), split.val_frames.sum() + (split.val_gold_frames
             & ~split.val_frames).sum(), split.val_gold_frames.sum(), split.n_val_sequences, split.test_frames.sum())
    n_feat = int(np.prod(store.features.shape[1:]))
    fits = store.n_frames * n_feat * 4 <= config.loader.in_memory_mb * 2 ** 20
    features: Any = store.features
    memory = None
    if fits:
        whole = np.asarray(store.features[:store.n_frames], dtype=np.float32).reshape(store.n_frames, -1)
        features = InMemoryChunks(whole, tuple(store.features.chunks))
        if crop == 1:
            memory = whole
    scan = scan_features(features, offsets, context, split.train_frames)
    log.info("read %d frames x %d features (%s) in %.1f s", store.n_frames, scan.n_features,
             "into memory" if fits else "statistics and halos", time.perf_counter() - t0)
    return Data(store.annotators, labels, gold, offsets, split, crop, context, scan, features, memory,
                store.n_frames, time.perf_counter() - t0)


def make_feed(data: Data, config: TrainConfig, device: str) -> Feed:
    """The memory feed for items that fit in memory, else the chunk feed."""
    if data.memory is not None:
        return MemoryFeed(data.memory, data.split.train_frames, batch_frames(config, 1), 2 * data.context + 1, device)
    return ChunkFeed(data, config, device)


# ------------------------------------------------------------------------------ the loop
def autocast_for(device: str, config: TrainConfig) -> AbstractContextManager[Any]:
    """bfloat16 autocast on CUDA when `mixed_precision`; a no-op otherwise (a null context: a
    disabled `torch.autocast` costs tens of microseconds per step for nothing)."""
    if device == "cuda" and config.mixed_precision:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def adamw(params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with PyTorch's fused kernel: one call updates every parameter (the default updates
    them one tensor at a time, about 0.6 ms a step for a small MLP on the CPU); the same values
    to rounding. Float32 parameters on the CPU or CUDA, the only ones training makes."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def seed_dropout(seed: int, device: str) -> None:
    """Seed the generator dropout draws from: `torch.manual_seed`'s effect on `device`. On the CPU
    only the CPU generator is seeded: `torch.manual_seed` also queues a lazy seed for CUDA, which
    records a stack trace when CUDA is not initialised (about a millisecond per training step)."""
    if device == "cpu":
        torch.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)


def _frame_targets(data: Data, trainee: Trainee, frames: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Labels (or baseline targets) of flattened frames, -1 for padding and frames not allowed."""
    ok = frames >= 0
    idx = np.where(ok, frames, 0)
    ok &= allowed[idx]
    if trainee.target is None:
        out = data.labels[idx]
        out[~ok] = -1
    else:
        out = np.where(ok, trainee.target[idx], -1)
    return out


def batch_frames(config: TrainConfig, crop: int) -> int:
    """Frames per step: the config's, else 2048 for sequences and 64 for items (crop 1)."""
    return config.optim.batch_frames or (64 if crop == 1 else 2048)


def lr_at(progress: float, config: TrainConfig) -> float:
    """Learning rate at a point of the run (0 = start, 1 = `max_epochs` done).

    `onecycle`: linear warm-up from lr/25 over the first `warmup` of the run, then a cosine decay
    to lr/1000; `constant`: lr. A pure function of progress, so a resumed run follows the same curve.

    >>> from configs.train import EncoderConfig, TrainConfig
    >>> cfg = TrainConfig()
    >>> [round(lr_at(p, cfg) / cfg.optim.lr, 3) for p in (0.0, cfg.optim.warmup, 1.0)]
    [0.04, 1.0, 0.001]
    """
    opt = config.optim
    return opt.lr if opt.schedule == "constant" else one_cycle(progress, opt.lr, opt.warmup)


def one_cycle(progress: float, lr: float, warmup: float) -> float:
    """Linear warm-up from lr/25 over `warmup` of the run, then cosine decay to lr/1000."""
    if progress < warmup:
        return lr * (0.04 + 0.96 * progress / warmup)
    rest = min(1.0, (progress - warmup) / max(1e-9, 1 - warmup))
    return float(lr * (0.001 + 0.999 * 0.5 * (1 + np.cos(np.pi * rest))))


def train_step(trainee: Trainee, x: torch.Tensor, target: torch.Tensor, device: str, config: TrainConfig,
               lr: float, n_kept: int | None = None) -> float:
    """One optimiser step on one batch at learning rate `lr`; returns the loss (a tensor's value).

    Rows without a target are dropped; `n_kept` (the caller's count of rows with one) equal to
    the row count skips the masking (the same values, without two gathers and their backward)."""
    net = trainee.net
    for group in trainee.optimizer.param_groups:
        group["lr"] = lr
    if not net.training:  # evaluation switched it to eval mode (a frozen encoder stays in eval)
        net.train()
    with autocast_for(device, config):
        z = net.encoder(x)
        z = z.reshape(-1, z.shape[-1])
        if n_kept is not None and n_kept == len(target):
            loss = net.head.loss(z, target)
        else:
            keep = (target >= 0).any(dim=1) if target.dim() == 2 else target >= 0
            loss = net.head.loss(z[keep], target[keep])
    trainee.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.optim.grad_clip:
        torch.nn.utils.clip_grad_norm_(net.parameters(), config.optim.grad_clip)
    trainee.optimizer.step()
    return float(loss.detach())


@dataclass
class _EvalSums:
    """One trainee's running sums over the evaluation batches."""

    correct: np.ndarray  # per annotator: validation labels predicted right
    count: np.ndarray  # per annotator: validation labels seen
    loss: float = 0.0
    n_loss: int = 0
    cons: list[np.ndarray] = field(default_factory=list)  # consensus class per frame, batch by batch
    frames: list[np.ndarray] = field(default_factory=list)


@torch.no_grad()
def _outputs(t: Trainee, x: torch.Tensor, keep: torch.Tensor, n_ann: int, device: str,
             config: TrainConfig, annotators: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
    """A trainee's annotator log-probabilities (n, R, C) (a baseline: its consensus for everyone,
    expanded, not copied; None unless `annotators`) and consensus classes (n,) on the kept rows."""
    with autocast_for(device, config):
        z = t.net.encoder(x)
        z = z.reshape(-1, z.shape[-1])[keep]
        if not annotators:
            return None, t.net.head.consensus_logits(z).float().argmax(-1)
        if isinstance(t.net, CrowdNet):
            logp = F.log_softmax(t.net.head.annotator_logits(z).float(), dim=-1)
            cons = t.net.head.consensus_logits(z).float().argmax(-1)
        else:
            c = t.net.head.consensus_logits(z).float()
            logp, cons = c[:, None, :].expand(-1, n_ann, -1), c.argmax(-1)
    return logp, cons


@torch.no_grad()
def evaluate(trainees: list[Trainee], data: Data, feed: Feed, config: TrainConfig,
             device: str) -> dict[str, EpochMetrics]:
    """Every trainee on the validation items: crowd-label cross-entropy and per-annotator accuracy
    (each annotator's output against that annotator's validation labels), consensus against the
    validation gold. Test items are not read here."""
    n_ann = data.labels.shape[1]
    split = data.split
    mask = split.val_frames | split.val_gold_frames
    acc = {t.name: _EvalSums(np.zeros(n_ann), np.zeros(n_ann)) for t in trainees}
    for t in trainees:
        t.net.eval()
    if mask.any():
        for x, frames in feed.eval_batches(mask):
            keep = frames >= 0
            fr = frames[keep]
            keep_t = torch.from_numpy(keep).to(device)
            val_labels = np.where(split.val_frames[fr][:, None], data.labels[fr], -1)
            have = val_labels >= 0
            f, r = np.nonzero(have)
            f_t, r_t = torch.from_numpy(f).to(device), torch.from_numpy(r).to(device)
            lab = torch.from_numpy(val_labels[f, r].astype(np.int64)).to(device)
            for t in trainees:
                a = acc[t.name]
                logp, cons_t = _outputs(t, x, keep_t, n_ann, device, config, annotators=len(f) > 0)
                if logp is not None and len(f):
                    pairs = logp[f_t, r_t]
                    a.loss += float(F.nll_loss(pairs, lab, reduction="sum"))
                    a.n_loss += len(f)
                    right = (pairs.argmax(-1) == lab).cpu().numpy()
                    a.correct += np.bincount(r[right], minlength=n_ann)
                    a.count += np.bincount(r, minlength=n_ann)
                a.cons.append(cons_t.cpu().numpy())
                a.frames.append(fr)
    out: dict[str, EpochMetrics] = {}
    for t in trainees:
        a = acc[t.name]
        cons = np.concatenate(a.cons) if a.cons else np.zeros(0, np.int64)
        frames_seen = np.concatenate(a.frames) if a.frames else np.zeros(0, np.int64)
        per = {data.annotators[r]: (float(a.correct[r] / a.count[r]) if a.count[r] else None) for r in range(n_ann)}
        known = [v for v in per.values() if v is not None]
        out[t.name] = EpochMetrics(
            val_loss=a.loss / a.n_loss if a.n_loss else None,
            val_accuracy=float(a.correct.sum() / a.count.sum()) if a.count.sum() else None,
            val_accuracy_per_annotator=per,
            val_accuracy_annotator_mean=float(np.mean(known)) if known else None,
            val_gold_accuracy=accuracy(cons, np.where(split.val_gold_frames[frames_seen], data.gold[frames_seen], -1)),
        )
    return out


@torch.no_grad()
def test_metrics(trainees: list[Trainee], data: Data, feed: Feed, config: TrainConfig, device: str) -> dict[str, float | None]:
    """Each trainee's consensus accuracy on the test items' gold (its weights as they are now:
    load the kept ones first). The one place that reads test gold."""
    split = data.split
    if not split.test_frames.any():
        return {t.name: None for t in trainees}
    n_ann = data.labels.shape[1]
    preds: dict[str, list[np.ndarray]] = {t.name: [] for t in trainees}
    seen: list[np.ndarray] = []
    for t in trainees:
        t.net.eval()
    for x, frames in feed.eval_batches(split.test_frames):
        keep = frames >= 0
        seen.append(frames[keep])
        keep_t = torch.from_numpy(keep).to(device)
        for t in trainees:
            preds[t.name].append(_outputs(t, x, keep_t, n_ann, device, config, annotators=False)[1].cpu().numpy())
    fr = np.concatenate(seen)
    return {t.name: accuracy(np.concatenate(preds[t.name]), data.gold[fr]) for t in trainees}


def score(metrics: EpochMetrics, rule: str) -> float:
    """The selection criterion of one epoch, higher is better (`last`: every epoch improves)."""
    if rule == "gold":
        return metrics.val_gold_accuracy if metrics.val_gold_accuracy is not None else -float("inf")
    if rule == "crowd":
        return -metrics.val_loss if metrics.val_loss is not None else -float("inf")
    return 0.0


def initial_encoder(config: EncoderConfig, scan: FeatureScan, kind: str) -> Encoder:
    """The encoder a config builds, standardised by the scan's statistics unless it loads weights
    (which hold the statistics they were trained with). Seed torch first for repeatable weights."""
    encoder = build_encoder(config, scan.n_features, kind=kind)
    if config.weights is None:
        encoder.standardize.set_stats(scan.mean, scan.std)
        if isinstance(encoder, TemporalConvEncoder):
            encoder.standardize_diff.set_stats(np.zeros_like(scan.diff_std), scan.diff_std)
    return encoder


def build_trainees(config: TrainConfig, data: Data, kind: str, n_annotators: int, n_classes: int,
                   targets: dict[str, np.ndarray], device: str) -> list[Trainee]:
    """The annotator model, the compared heads and one baseline per aggregated target, each from
    the same initial encoder."""
    trainees = []
    enc_cfg = config.encoder
    heads = [MAIN, *[k for k in dict.fromkeys(config.compare_heads) if k != config.head.kind]]
    kinds = list(HEADS.names())
    for name in [*heads, *targets]:
        torch.manual_seed(config.seed)  # identical initial encoder weights for every trainee
        encoder = initial_encoder(enc_cfg, data.scan, kind)
        torch.manual_seed(config.seed + 1)
        if name in targets:
            net: CrowdNet | BaselineNet = BaselineNet(encoder, ClassifierHead(encoder.dim, n_classes))
            uid = TRAINEE_IDS[name]
        else:
            head_cfg = config.head if name == MAIN else config.head.model_copy(update={"kind": name})
            net = CrowdNet(encoder, build_head(head_cfg, encoder.dim, n_annotators, n_classes))
            uid = 0 if name == MAIN else 100 + kinds.index(name)
        net.to(device)
        params = [p for p in net.parameters() if p.requires_grad]
        opt = adamw(params, config.optim.lr, config.optim.weight_decay)
        trainee = Trainee(name, net, opt, targets.get(name), uid)
        if data.memory is not None:  # the training targets of every frame, on the device, once
            allowed = data.split.train_frames
            tgt = np.where(allowed[:, None], data.labels, -1) if trainee.target is None \
                else np.where(allowed, trainee.target, -1)
            trainee.target_t = torch.from_numpy(tgt.astype(np.int64)).to(device)
            trainee.has_target = np.asarray((tgt >= 0).any(axis=1) if tgt.ndim == 2 else tgt >= 0)
        trainees.append(trainee)
    return trainees


def epoch_seed(*keys: int) -> int:
    """A torch seed from several integers (seed, epoch, step, ...)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


@dataclass
class Fit:
    """What `fit` did: each epoch's metrics of the models that trained in it (index = epoch)."""

    history: History
    resumed_from_epoch: int | None
    epoch_seconds: list[float]
    rule: str


def _select(trainees: list[Trainee], entry: dict[str, EpochMetrics], epoch: int, rule: str,
            config: TrainConfig, first: int) -> None:
    """Keep each trainee's weights when this epoch improves its criterion; early stopping."""
    opt = config.optim
    for t in trainees:
        if t.name not in entry:
            continue
        s = score(entry[t.name], rule)
        eligible = rule != "crowd" or epoch + 1 >= first
        if rule == "last" or (eligible and s > t.best_score + opt.min_delta):
            t.best_score, t.best_epoch, t.bad_epochs = s, epoch, 0
            t.best_state = {k: v.detach().clone().cpu() for k, v in t.net.state_dict().items()}
        elif eligible:
            t.bad_epochs += 1
        if rule != "last" and epoch + 1 >= first and t.bad_epochs >= opt.patience:
            t.stopped = True
            log.info("%s: early stop after epoch %d (kept epoch %d)", t.name, epoch + 1, t.best_epoch + 1)


def fit(trainees: list[Trainee], data: Data, feed: Feed, config: TrainConfig, device: str, run: RunFolder,
        rule: str) -> Fit:
    """Train until every trainee stops early or `max_epochs`; resume from the run's checkpoint."""
    opt = config.optim
    start_epoch, resumed_from = 0, None
    ckpt = run.load_checkpoint(device)
    if ckpt is not None and all(t.name in ckpt["trainees"] for t in trainees):
        for t in trainees:
            t.load(ckpt["trainees"][t.name])
        start_epoch = resumed_from = int(ckpt["epoch"]) + 1
        if start_epoch >= opt.max_epochs or all(t.stopped for t in trainees):
            log.info("the checkpoint in %s holds a finished run (%d epochs): nothing to train", run.path,
                     start_epoch)
        else:
            log.info("resuming after epoch %d from the checkpoint in %s", start_epoch, run.path)
    history = run.read_history(start_epoch) if start_epoch else []
    first = min_epochs(config)
    n_batches = feed.n_batches()
    total = int(data.split.train_frames.sum())
    epoch_times: list[float] = []
    last_log = last_ckpt = time.perf_counter()
    for epoch in range(start_epoch, opt.max_epochs):
        active = [t for t in trainees if not t.stopped]
        if not active:
            break
        t0 = time.perf_counter()
        rng = np.random.default_rng([config.seed, epoch, 7])
        losses = {t.name: [0.0, 0] for t in active}
        done = 0
        for step, (x, frames) in enumerate(feed.train_batches(epoch, rng)):
            lr = lr_at((epoch + step / n_batches) / opt.max_epochs, config)
            frames_t = torch.from_numpy(frames).to(device) if data.memory is not None else None
            for t in active:
                # each trainee's dropout from its own seed: a baseline does not depend on the heads
                seed_dropout(epoch_seed(config.seed, epoch, step, t.uid), device)
                if t.target_t is not None and t.has_target is not None and frames_t is not None:
                    target = t.target_t[frames_t]
                    n = int(t.has_target[frames].sum())  # no device sync, no tensor ops per step
                else:
                    target = torch.from_numpy(_frame_targets(data, t, frames, data.split.train_frames)).to(device)
                    target = target.long()
                    n = int((target >= 0).any(dim=1).sum()) if target.dim() == 2 else int((target >= 0).sum())
                if n == 0:
                    continue
                losses[t.name][0] += train_step(t, x, target, device, config, lr, n) * n
                losses[t.name][1] += n
            done += len(frames) if data.memory is not None else int(data.split.train_frames[frames[frames >= 0]].sum())
            now = time.perf_counter()
            if now - last_log >= config.log_every_s:
                rate = done / max(now - t0, 1e-9)
                log.info("epoch %d/%d: %d/%d frames, %.0f frames/s, epoch ETA %.0f s", epoch + 1, opt.max_epochs,
                         done, total, rate, (total - done) / max(rate, 1e-9))
                last_log = now
        entry = evaluate(active, data, feed, config, device)
        for t in active:
            entry[t.name].train_loss = losses[t.name][0] / max(losses[t.name][1], 1)
            t.epochs = epoch + 1
        _select(active, entry, epoch, rule, config, first)
        history.append(entry)
        epoch_times.append(time.perf_counter() - t0)
        now = time.perf_counter()
        finished = epoch + 1 == opt.max_epochs or all(t.stopped for t in trainees)
        # a finished run's record is its model and summary (written next); a crash before them
        # resumes from the last periodic checkpoint, so the last epoch needs none of its own
        if now - last_ckpt >= config.checkpoint_every_s and not (finished and config.checkpoint_every_s):
            run.write_history(history)
            run.save_checkpoint({"epoch": epoch, "trainees": {t.name: t.state() for t in trainees}})
            last_ckpt = time.perf_counter()
        if finished:
            run.write_history(history)  # the history file is read back for the MLflow curves
        if finished or epoch == start_epoch or now - last_log >= config.log_every_s:
            left = opt.max_epochs - epoch - 1
            parts = " | ".join(
                f"{t.name} loss {_fmt(entry[t.name].train_loss)} val {_fmt(entry[t.name].val_loss)} "
                f"gold {_fmt(entry[t.name].val_gold_accuracy)}" for t in active)
            log.info("epoch %d/%d in %.2f s (%.0f frames/s): %s; ETA at most %.0f s", epoch + 1, opt.max_epochs,
                     epoch_times[-1], total / max(epoch_times[-1], 1e-9), parts, left * float(np.mean(epoch_times)))
            last_log = now
    return Fit(history, resumed_from, epoch_times, rule)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


# --------------------------------------------------------------------------- entry points
def train_model(config: PipelineConfig, layout: RootLayout) -> TrainResult:
    """Train on the config's dataset store at its latest version, one model per seed (a rerun
    resumes each seed's checkpoint); the result is the first seed's with every seed's metrics."""
    t_start = time.perf_counter()
    cfg = config.train
    uri = layout.dataset_uri(config.name)
    store = DatasetStore.open(uri)
    if not store.n_frames:
        raise InputError(uri, None, store.version, "the dataset store is empty (run `annostyle ingest` first)")
    if not store.has_features:
        return label_only_result(config, store)
    if store.n_labels == 0:  # the manifest counts them: no need to read the labels here
        raise InputError(uri, "labels", 0, "no crowd labels to train on")
    setup = set_up(config, store)
    seeds = cfg.seed_list()
    held = setup.data.n_frames * setup.data.scan.n_features * 4 if isinstance(setup.data.features, InMemoryChunks) else 0
    workers = seed_workers(cfg, setup.device, len(seeds), held)
    if workers > 1:
        runs = train_seeds_in_processes(config, layout, seeds, setup.targets, workers)
    else:
        runs = [train_seed(config, layout, seed_config(cfg, s), setup) for s in seeds]
    chosen = runs[0]
    result = chosen.model_copy(update={
        "seconds": time.perf_counter() - t_start,
        "seeds": [seed_run(r) for r in runs],
        "summary": seed_summary([r.metrics for r in runs]),
        "test_accuracy": {name: stats["test_accuracy"].mean
                          for name, stats in seed_summary([r.metrics for r in runs]).items()},
    })
    if len(runs) > 1:
        result.key = result_key(store.version, cfg)
        RunFolder(layout.run_dir(config.name, result.key)).create().write_summary(result)
    from tasks.train_figures import write_figures  # Matplotlib: only where a model was trained

    write_figures(result)  # the stage's figures; its MLflow record logs the files
    return result


@dataclass
class SetUp:
    """What every seed of a training shares: the store, its data and split, the batches, the
    encoder kind, the baselines' aggregated targets, the device and the selection rule."""

    store: DatasetStore
    data: Data
    feed: Feed
    kind: str
    crop: int
    targets: dict[str, np.ndarray]
    device: str
    rule: str


def set_up(config: PipelineConfig, store: DatasetStore, targets: dict[str, np.ndarray] | None = None) -> SetUp:
    """Read the store for training and check the split; aggregate the baselines' targets on the
    training items' labels (unless given: a seed worker gets its parent's)."""
    cfg = config.train
    device = pick_device(cfg)
    set_determinism(cfg, device)
    lengths = np.diff(store.offsets)
    kind = resolve_kind(cfg.encoder, int(lengths.max()))
    context = context_frames_each_side(cfg.encoder, kind)
    crop = 1 if int(lengths.max()) == 1 else cfg.loader.crop_frames
    data = prepare(store, cfg, context, crop)
    rule = selection_rule(cfg, data.split, where=store.uri)
    if not data.split.train_frames.any():
        raise InputError(store.uri, "labels", 0, "no crowd-labelled item is left to train on after the split")
    if targets is None:
        targets = {}
        for method in cfg.baselines:  # aggregated on the training items' labels only
            train_labels = np.where(data.split.train_frames[:, None], data.labels, -1).astype(data.labels.dtype)
            targets[method] = CrowdAggregate(method, store.n_classes).fit(train_labels).labels_
    return SetUp(store, data, make_feed(data, cfg, device), kind, crop, targets, device, rule)


def seed_workers(config: TrainConfig, device: str, n_seeds: int, held_bytes: int) -> int:
    """Processes for the seeds: `seed_workers`, else as many as the usable cores hold at `threads`
    each (one when `threads` is unset: torch then takes every core) and as many copies of the
    in-memory features (`held_bytes` each) as `loader.in_memory_mb` holds, at most one per seed;
    one on CUDA (the seeds would share one device)."""
    if device != "cpu" or n_seeds < 2:
        return 1
    if config.seed_workers is not None:
        return min(config.seed_workers, n_seeds)
    if config.threads is None:
        return 1
    by_memory = int(config.loader.in_memory_mb * 2 ** 20 // held_bytes) if held_bytes else n_seeds
    return max(1, min(n_seeds, usable_cores() // config.threads, by_memory))


def train_seeds_in_processes(config: PipelineConfig, layout: RootLayout, seeds: list[int],
                             targets: dict[str, np.ndarray], workers: int) -> list[TrainResult]:
    """Each seed in a worker process (`tasks.workers`), `workers` at a time; the results in seed
    order. Each seed trains as it would alone: its own seeding, its own run folder and
    checkpoint, so a retry after a crash resumes every seed."""
    log.info("training seeds %s in %d processes", seeds, workers)
    with process_pool(workers, threads=config.train.threads or 1) as pool:
        runs = results_in_order(pool, _train_one_seed, [(config, layout, s, targets) for s in seeds])
    for r in runs:
        log.info("seed %d: %d epochs, kept epoch %d, test accuracy %s (%.1f s)", r.seed, r.epochs, r.best_epoch,
                 _fmt(r.test_accuracy.get("model")), r.seconds)
    return runs


def _train_one_seed(config: PipelineConfig, layout: RootLayout, seed: int,
                    targets: dict[str, np.ndarray]) -> TrainResult:
    """One seed in a worker: the parent's set-up rebuilt from the store (the targets passed in)."""
    for handler in logging.getLogger().handlers:  # parallel seeds' lines interleave: each says its seed
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s %(name)s [{config.name} seed {seed}]: %(message)s"))
    setup = set_up(config, DatasetStore.open(layout.dataset_uri(config.name)), targets)
    return train_seed(config, layout, seed_config(config.train, seed), setup)


def train_seed(config: PipelineConfig, layout: RootLayout, cfg: TrainConfig, setup: SetUp) -> TrainResult:
    """One seed's training in its own run folder: its models, the saved annotator model, its result
    (a finished run's result when the folder holds one)."""
    t_start = time.perf_counter()
    store, data, feed, kind, crop = setup.store, setup.data, setup.feed, setup.kind, setup.crop
    targets, device, rule = setup.targets, setup.device, setup.rule
    key = train_key(store.version, cfg)
    run = RunFolder(layout.run_dir(config.name, key)).create()
    finished = run.read_summary()
    if finished is not None and finished.model_dir is not None and Path(finished.model_dir).exists():
        log.info("seed %d: using the finished run in %s", cfg.seed, run.path)
        return finished.model_copy(update={"seeds": [], "summary": {}, "resumed_from_epoch": finished.epochs})
    torch.manual_seed(cfg.seed)
    trainees = build_trainees(cfg, data, kind, store.n_annotators, store.n_classes, targets, device)
    log.info("seed %d: training %s (%s encoder, %d context frames each side)%s and baselines %s on %s, "
             "selection %s", cfg.seed, cfg.head.kind, kind, data.context,
             f", compared with {compared}" if (compared := [t.name for t in trainees[1:] if t.target is None]) else "",
             list(targets), device, rule)
    outcome = fit(trainees, data, feed, cfg, device, run, rule)
    metrics = best_metrics(trainees, outcome.history, test_metrics_after_load(trainees, data, feed, cfg, device))
    main = trainees[0]
    net = cast(CrowdNet, main.net)
    model_dir = save_model(run.model_dir, net.state_dict(), model_spec(config, store, net, kind, crop, key))
    split = data.split
    result = TrainResult(
        dataset=config.name, version=store.version, store=store.uri, key=key,
        head=cfg.head.kind, encoder=kind, context_frames=2 * data.context + 1, device=device,
        epochs=main.epochs, best_epoch=main.best_epoch + 1, resumed_from_epoch=outcome.resumed_from_epoch,
        annotators=store.annotators, classes=store.classes, class_names=store.class_names,
        n_train_frames=int(split.train_frames.sum()), n_val_frames=int(split.val_frames.sum()),
        n_val_gold_frames=int(split.val_gold_frames.sum()), n_test_frames=int(split.test_frames.sum()),
        model_dir=str(model_dir), checkpoint_dir=str(run.path), history_path=str(run.history_path),
        seconds=time.perf_counter() - t_start,
        train_frames_per_s=float(split.train_frames.sum() / np.mean(outcome.epoch_seconds))
        if outcome.epoch_seconds else None,
        model_run_id=None, metrics=metrics, split=split.kind, selection=rule, seed=cfg.seed,
        test_accuracy={name: m.test_accuracy for name, m in metrics.models().items()},
    )
    run.write_summary(result)
    return result


def test_metrics_after_load(trainees: list[Trainee], data: Data, feed: Feed, cfg: TrainConfig,
                            device: str) -> dict[str, float | None]:
    """Load every trainee's kept weights, then measure the test items once."""
    for t in trainees:
        if t.best_state is None:
            raise RuntimeError(f"{t.name}: no epoch was kept (did the loss become NaN?)")
        t.net.load_state_dict(t.best_state)
    return test_metrics(trainees, data, feed, cfg, device)


def best_metrics(trainees: list[Trainee], history: History, test: dict[str, float | None]) -> TrainMetrics:
    """Each trainee's metrics at its kept epoch plus its test accuracy; compared heads under
    `heads`, baselines by name."""
    best: dict[str, BestMetrics] = {}
    for t in trainees:
        m = history[t.best_epoch][t.name].model_dump()
        m["test_accuracy"] = test.get(t.name)
        best[t.name] = BestMetrics(**m, best_epoch=t.best_epoch + 1, epochs=t.epochs)
    main = best.pop(MAIN)
    heads = {t.name: best.pop(t.name) for t in trainees[1:] if t.target is None}
    return TrainMetrics(**main.model_dump(), heads=heads, **best)


SUMMARY_METRICS = ("test_accuracy", "val_gold_accuracy", "val_loss", "val_accuracy", "val_accuracy_annotator_mean",
                   "best_epoch")


def seed_summary(metrics: list[TrainMetrics]) -> dict[str, dict[str, MeanSd]]:
    """Mean and sample standard deviation over the seeds of every model's kept-epoch metrics."""
    out: dict[str, dict[str, MeanSd]] = {}
    for name in metrics[0].models():
        out[name] = {}
        for key in SUMMARY_METRICS:
            values = [v for m in metrics if (v := getattr(m.models().get(name), key, None)) is not None]
            out[name][key] = MeanSd(mean=float(np.mean(values)) if values else None,
                                    sd=float(np.std(values, ddof=1)) if len(values) > 1 else None, n=len(values))
    return out


def seed_run(result: TrainResult) -> SeedRun:
    return SeedRun(seed=result.seed if result.seed is not None else 0, key=result.key or "",
                   model_dir=result.model_dir, checkpoint_dir=result.checkpoint_dir, history_path=result.history_path,
                   epochs=result.epochs, best_epoch=result.best_epoch, resumed_from_epoch=result.resumed_from_epoch,
                   seconds=result.seconds, metrics=result.metrics)


def model_spec(config: PipelineConfig, store: DatasetStore, net: CrowdNet, kind: str, crop: int,
               key: str) -> ModelSpec:
    """What `tasks.model.load_model` needs to rebuild and read the network."""
    return ModelSpec(
        dataset=config.name, version=store.version, store=store.uri, key=key,
        encoder_kind=kind, encoder=config.train.encoder.model_dump(mode="json"),
        head=head_spec(config.train.head, net.head),
        n_features=int(np.prod(store.features.shape[1:])), feature_shape=list(store.features.shape[1:]),
        n_annotators=store.n_annotators, n_classes=store.n_classes, annotators=store.annotators,
        classes=store.classes, class_names=store.class_names, crop=crop, model_run_id=None,
    )
