"""Training: the annotator-aware model and the MV / DS baselines, on one store, in one pass.

`train_model(config, layout)` is the stage function (no Prefect, no MLflow; `flows.train` wraps
it in a Prefect task and records the run).
What it does:

1. opens the store at its latest version; a store without features gets no model: the crowd-kit
   aggregators' consensus is reported instead (`label_only_result`);
2. splits the labelled sequences (items) into train and validation by sequence; frames with gold
   and no crowd label are test frames;
3. one sequential pass over the features: standardisation statistics (train frames) and the halo
   frames the loader needs at chunk borders;
4. trains the head of `config.train.head` and one classifier per baseline, each on its own copy of
   the same encoder (same architecture, same initial weights), on the same batches: chunks in
   random order, crops shuffled in a buffer of chunks (`tasks.loader`);
5. after every epoch: evaluation on the validation and test frames, early stopping on each
   model's validation loss, the best weights kept, and a checkpoint written atomically to the
   run folder (`RootLayout.run_dir(dataset, key)`, its files `storage.model_store.RunFolder`). The key is the dataset version plus a hash of
   the train config, so a rerun after a crash finds the checkpoint and resumes from it. Shuffles
   are seeded by (seed, epoch) and dropout by (seed, epoch, step, model), so a resumed run equals
   an uninterrupted one (bit for bit on the CPU with the same thread count);
6. writes the best annotator model to the run folder's `model/` (`storage.model_store`) and
   returns a `TrainResult` (also the run folder's `summary.json`); per-epoch history goes to
   `history.json` beside it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from configs.schema import PipelineConfig
from configs.train import EncoderConfig, TrainConfig
from errors import InputError
from storage.dataset_store import DatasetStore
from storage.layout import RootLayout
from storage.model_store import History, ModelSpec, RunFolder, save_model
from storage.results.train import BestMetrics, EpochMetrics, TrainMetrics, TrainResult
from tasks.aggregate import CrowdAggregate, accuracy
from tasks.encoders import Encoder, TemporalConvEncoder, build_encoder, context_frames_each_side, resolve_kind
from tasks.heads import ClassifierHead, build_head, head_spec
from tasks.label_only import NEEDS_FEATURES, label_only_result  # noqa: F401  (torch-free; re-exported)
from tasks.loader import (
    ChunkReader,
    Crops,
    FeatureScan,
    cut_crops,
    iter_batches,
    keep_crops_with,
    scan_features,
)
from tasks.model import BaselineNet, CrowdNet

log = logging.getLogger(__name__)

MAIN = "model"
"""The annotator model's name among the trainees (the baselines are named after their aggregator)."""


# --------------------------------------------------------------------------- set-up helpers
def train_key(version: str, config: TrainConfig) -> str:
    """Checkpoint key: dataset version plus a hash of every train setting that changes the result."""
    settings = config.model_dump(mode="json", exclude={"log_every_s"})
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return f"{version}-{digest}"


def pick_device(config: TrainConfig) -> str:
    if config.device == "cuda" and not torch.cuda.is_available():
        raise InputError("train.device", "device", "cuda", "no CUDA device is available here")
    if config.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return config.device


def set_determinism(config: TrainConfig, device: str) -> None:
    """Seeded, deterministic kernels; a fixed CPU thread count when asked (results depend on it)."""
    if config.threads:
        torch.set_num_threads(config.threads)
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


@dataclass
class Trainee:
    """One network trained in the run: the annotator model or a baseline on aggregated labels."""

    name: str
    net: CrowdNet | BaselineNet
    optimizer: torch.optim.Optimizer
    target: np.ndarray | None = None  # baselines: one label per frame; None: the annotator matrix
    best_loss: float = float("inf")
    best_epoch: int = -1
    bad_epochs: int = 0
    stopped: bool = False
    epochs: int = 0
    best_state: dict[str, torch.Tensor] | None = None

    def state(self) -> dict[str, Any]:  # JSON boundary: checkpoint.pt (torch.save), this trainee
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "best_loss": self.best_loss, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "stopped": self.stopped, "epochs": self.epochs, "best_state": self.best_state}

    def load(self, state: dict[str, Any]) -> None:  # JSON boundary: checkpoint.pt (torch.load), this trainee
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        for key in ("best_loss", "best_epoch", "bad_epochs", "stopped", "epochs", "best_state"):
            setattr(self, key, state[key])


@dataclass
class _EvalSums:
    """One trainee's running sums over the evaluation batches."""

    correct: np.ndarray  # per annotator: validation labels predicted right
    count: np.ndarray  # per annotator: validation labels seen
    loss: float = 0.0
    n_loss: int = 0
    cons: list[np.ndarray] = field(default_factory=list)  # consensus class per frame, batch by batch


def _baseline_target(trainee: Trainee) -> np.ndarray:
    if trainee.target is None:
        raise ValueError(f"{trainee.name} is the annotator model, not a baseline")
    return trainee.target


@dataclass
class Data:
    """Everything about the store that training keeps in memory (labels, not features)."""

    store: DatasetStore
    labels: np.ndarray  # (n, R) int16
    gold: np.ndarray  # (n,) int16
    offsets: np.ndarray
    train_frames: np.ndarray  # bool per frame: labelled frame of a training sequence
    val_frames: np.ndarray  # labelled frame of a validation sequence
    test_frames: np.ndarray  # gold and no crowd label
    train_sequences: np.ndarray  # bool per frame: the frame's sequence is a training sequence
    eval_sequences: np.ndarray  # bool per frame: validation sequence or holds a test frame
    crop: int
    context: int
    scan: FeatureScan
    eval_crops: Crops  # the validation and test crops, the same every epoch


@dataclass(frozen=True)
class FrameSplit:
    """Training's split, as bools per frame (a sequence is never on both sides)."""

    train_frames: np.ndarray  # crowd-labelled frames of the training sequences: the labels training uses
    val_frames: np.ndarray  # crowd-labelled frames of the validation sequences
    test_frames: np.ndarray  # gold and no crowd label (in any sequence)
    train_sequences: np.ndarray  # the frame's sequence is a training sequence
    eval_sequences: np.ndarray  # the frame's sequence is a validation sequence or holds a test frame
    n_val_sequences: int


def split_frames(labels: np.ndarray, gold: np.ndarray, offsets: np.ndarray, config: TrainConfig) -> FrameSplit:
    """Validation sequences drawn by `split_sequences`; test frames are gold-only frames."""
    labelled = np.asarray((labels >= 0).any(axis=1))
    val_seq = split_sequences(offsets, labelled, config.split.val_fraction, config.seed)
    lengths = np.diff(offsets)
    val_seq_f = np.repeat(val_seq, lengths)
    test = (gold >= 0) & ~labelled
    test_seq = np.repeat(np.add.reduceat(test.astype(np.int64), offsets[:-1]) > 0, lengths) \
        if len(lengths) else np.zeros(0, bool)
    return FrameSplit(labelled & ~val_seq_f, labelled & val_seq_f, test, ~val_seq_f, val_seq_f | test_seq,
                      int(val_seq.sum()))


def prepare(store: DatasetStore, config: TrainConfig, context: int, crop: int) -> Data:
    """Labels, gold, the split and the feature scan."""
    labels, gold, offsets = store.read_labels(), store.read_gold(), store.offsets
    split = split_frames(labels, gold, offsets, config)
    log.info("split: %d training frames, %d validation frames (%d of %d sequences), %d test frames",
             split.train_frames.sum(), split.val_frames.sum(), split.n_val_sequences, len(offsets) - 1,
             split.test_frames.sum())
    scan = scan_features(store.features, offsets, context, split.train_frames)
    log.info("read %d frames x %d features for statistics and halos in %.1f s", store.n_frames,
             scan.n_features, scan.seconds)
    eval_crops = keep_crops_with(cut_crops(offsets, scan.chunk, crop, split.eval_sequences),
                                 split.val_frames | split.test_frames)
    return Data(store, labels, gold, offsets, split.train_frames, split.val_frames, split.test_frames,
                split.train_sequences, split.eval_sequences, crop, context, scan, eval_crops)


# ------------------------------------------------------------------------------ the loop
def autocast_for(device: str, config: TrainConfig) -> torch.autocast:
    """bfloat16 autocast on CUDA when `mixed_precision`; a no-op on the CPU."""
    enabled = device == "cuda" and config.mixed_precision
    return torch.autocast(device_type="cuda" if device == "cuda" else "cpu", dtype=torch.bfloat16, enabled=enabled)


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
               lr: float) -> float:
    """One optimiser step on one batch at learning rate `lr`; returns the loss."""
    net = trainee.net
    for group in trainee.optimizer.param_groups:
        group["lr"] = lr
    net.train()
    with autocast_for(device, config):
        z = net.encoder(x)
        z = z.reshape(-1, z.shape[-1])
        keep = (target >= 0).any(dim=1) if target.dim() == 2 else target >= 0
        loss = net.head.loss(z[keep], target[keep])
    trainee.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.optim.grad_clip:
        torch.nn.utils.clip_grad_norm_(net.parameters(), config.optim.grad_clip)
    trainee.optimizer.step()
    return float(loss.detach())


@torch.no_grad()
def evaluate(trainees: list[Trainee], data: Data, reader: ChunkReader, config: TrainConfig,
             device: str) -> dict[str, EpochMetrics]:
    """Validation loss and accuracies of every trainee on the validation and test frames.

    Per-annotator accuracy compares each annotator's output with that annotator's validation
    labels (a baseline gives its one prediction for everyone); consensus accuracy compares the
    consensus with gold on validation and test frames; test accuracy on test frames only.
    """
    n_ann = data.labels.shape[1]
    acc = {t.name: _EvalSums(np.zeros(n_ann), np.zeros(n_ann)) for t in trainees}
    seen: list[np.ndarray] = []
    batch_crops = max(1, batch_frames(config, data.crop) * 4 // data.crop)
    for t in trainees:
        t.net.eval()
    for batch in iter_batches(reader, data.eval_crops, data.offsets, data.crop, batch_crops, 1, None):
        x = torch.from_numpy(batch.x).to(device)
        frames = batch.frames.reshape(-1)
        keep = frames >= 0
        keep[keep] = data.val_frames[frames[keep]] | data.test_frames[frames[keep]]
        fr = frames[keep]
        seen.append(fr)
        keep_t = torch.from_numpy(keep).to(device)
        val_labels = np.where(data.val_frames[fr][:, None], data.labels[fr], -1)
        have = val_labels >= 0
        for t in trainees:
            a = acc[t.name]
            with autocast_for(device, config):
                z = t.net.encoder(x)
                z = z.reshape(-1, z.shape[-1])[keep_t]
                if isinstance(t.net, CrowdNet):  # the annotator model (its target is the label matrix)
                    logits = t.net.head.annotator_logits(z).float()
                    pred = logits.argmax(-1).cpu().numpy()
                    f, r = np.nonzero(have)
                    if len(f):
                        lab = torch.from_numpy(val_labels[f, r].astype(np.int64)).to(device)
                        a.loss += float(F.cross_entropy(logits[f, r], lab, reduction="sum"))
                        a.n_loss += len(f)
                    cons = t.net.head.consensus_logits(z).argmax(-1).cpu().numpy()
                else:  # a baseline: its one aggregated label per frame
                    logp = t.net.head.consensus_logits(z).float()
                    cons = logp.argmax(-1).cpu().numpy()
                    pred = np.repeat(cons[:, None], n_ann, axis=1)
                    tgt = np.where(data.val_frames[fr], _baseline_target(t)[fr], -1)
                    if (tgt >= 0).any():
                        tg = torch.from_numpy(tgt[tgt >= 0].astype(np.int64)).to(device)
                        a.loss += float(F.nll_loss(logp[torch.from_numpy(tgt >= 0).to(device)], tg, reduction="sum"))
                        a.n_loss += int((tgt >= 0).sum())
            a.correct += ((pred == val_labels) & have).sum(axis=0)
            a.count += have.sum(axis=0)
            a.cons.append(cons)
    fr = np.concatenate(seen) if seen else np.zeros(0, np.int64)
    gold = data.gold[fr]
    out: dict[str, EpochMetrics] = {}
    names = data.store.annotators
    for t in trainees:
        a = acc[t.name]
        cons = np.concatenate(a.cons) if a.cons else np.zeros(0, np.int64)
        per = {names[r]: (float(a.correct[r] / a.count[r]) if a.count[r] else None) for r in range(n_ann)}
        known = [v for v in per.values() if v is not None]
        out[t.name] = EpochMetrics(
            val_loss=a.loss / a.n_loss if a.n_loss else None,
            val_accuracy=float(a.correct.sum() / a.count.sum()) if a.count.sum() else None,
            val_accuracy_per_annotator=per,
            val_accuracy_annotator_mean=float(np.mean(known)) if known else None,
            consensus_accuracy=accuracy(cons, gold),
            val_gold_accuracy=accuracy(cons, np.where(data.val_frames[fr], gold, -1)),
            test_accuracy=accuracy(cons, np.where(data.test_frames[fr], gold, -1)),
        )
    return out


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
    """The annotator model and one baseline per aggregated target, each from the same initial encoder."""
    trainees = []
    enc_cfg = config.encoder
    for name in [MAIN, *targets]:
        torch.manual_seed(config.seed)  # identical initial encoder weights for every trainee
        encoder = initial_encoder(enc_cfg, data.scan, kind)
        torch.manual_seed(config.seed + 1)
        if name == MAIN:
            net: CrowdNet | BaselineNet = CrowdNet(encoder, build_head(config.head, encoder.dim, n_annotators, n_classes))
        else:
            net = BaselineNet(encoder, ClassifierHead(encoder.dim, n_classes))
        net.to(device)
        params = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=config.optim.lr, weight_decay=config.optim.weight_decay)
        trainees.append(Trainee(name, net, opt, targets.get(name)))
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


def fit(trainees: list[Trainee], data: Data, config: TrainConfig, device: str, run: RunFolder) -> Fit:
    """Train until every trainee stops early or `max_epochs`; resume from the run's checkpoint."""
    opt = config.optim
    reader = ChunkReader(data.store.features, data.store.n_frames, data.scan)
    start_epoch, resumed_from = 0, None
    ckpt = run.load_checkpoint(device)
    if ckpt is not None:
        for t in trainees:
            t.load(ckpt["trainees"][t.name])
        start_epoch = resumed_from = int(ckpt["epoch"]) + 1
        if start_epoch >= opt.max_epochs or all(t.stopped for t in trainees):
            log.info("the checkpoint in %s holds a finished run (%d epochs): nothing to train", run.path,
                     start_epoch)
        else:
            log.info("resuming after epoch %d from the checkpoint in %s", start_epoch, run.path)
    history = run.read_history(start_epoch) if start_epoch else []
    batch_crops = max(1, batch_frames(config, data.crop) // data.crop)
    epoch_times: list[float] = []
    last_log = time.perf_counter()
    for epoch in range(start_epoch, opt.max_epochs):
        active = [t for t in trainees if not t.stopped]
        if not active:
            break
        t0 = time.perf_counter()
        rng = np.random.default_rng([config.seed, epoch, 7])
        crops = keep_crops_with(cut_crops(data.offsets, data.scan.chunk, data.crop, data.train_sequences, rng),
                                data.train_frames)
        total = int(data.train_frames.sum())
        losses = {t.name: [0.0, 0] for t in active}
        done = 0
        n_batches = max(1, -(-len(crops) // batch_crops))
        for step, batch in enumerate(iter_batches(reader, crops, data.offsets, data.crop, batch_crops, config.loader.buffer_chunks, rng)):
            lr = lr_at((epoch + step / n_batches) / opt.max_epochs, config)
            x = torch.from_numpy(batch.x).to(device, non_blocking=True)
            frames = batch.frames.reshape(-1)
            for i, t in enumerate(trainees):
                if t.stopped:
                    continue
                # each trainee's dropout from its own seed: a baseline does not depend on the head
                torch.manual_seed(epoch_seed(config.seed, epoch, step, i))
                target = torch.from_numpy(_frame_targets(data, t, frames, data.train_frames)).to(device)
                if target.dim() == 1:
                    target = target.long()
                n = int((target >= 0).any(dim=1).sum()) if target.dim() == 2 else int((target >= 0).sum())
                if n == 0:
                    continue
                losses[t.name][0] += train_step(t, x, target, device, config, lr) * n
                losses[t.name][1] += n
            done += int(data.train_frames[frames[frames >= 0]].sum())
            now = time.perf_counter()
            if now - last_log >= config.log_every_s:
                rate = done / max(now - t0, 1e-9)
                log.info("epoch %d/%d: %d/%d frames, %.0f frames/s, epoch ETA %.0f s", epoch + 1, opt.max_epochs,
                         done, total, rate, (total - done) / max(rate, 1e-9))
                last_log = now
        entry = evaluate(active, data, reader, config, device)
        for t in active:
            m = entry[t.name]
            m.train_loss = losses[t.name][0] / max(losses[t.name][1], 1)
            t.epochs = epoch + 1
            val = m.val_loss if m.val_loss is not None else m.train_loss
            if val < t.best_loss - opt.min_delta:
                t.best_loss, t.best_epoch, t.bad_epochs = val, epoch, 0
                t.best_state = {k: v.detach().clone().cpu() for k, v in t.net.state_dict().items()}
            else:
                t.bad_epochs += 1
                if t.bad_epochs >= opt.patience:
                    t.stopped = True
                    log.info("%s: early stop after epoch %d (best epoch %d)", t.name, epoch + 1, t.best_epoch + 1)
        history.append(entry)
        run.write_history(history)
        run.save_checkpoint({"epoch": epoch, "trainees": {t.name: t.state() for t in trainees}})
        epoch_times.append(time.perf_counter() - t0)
        left = opt.max_epochs - epoch - 1
        parts = " | ".join(
            f"{t.name} loss {_fmt(entry[t.name].train_loss)} val {_fmt(entry[t.name].val_loss)} "
            f"acc {_fmt(entry[t.name].val_accuracy)} gold {_fmt(entry[t.name].consensus_accuracy)}"
            for t in active)
        log.info("epoch %d/%d in %.1f s (%.0f frames/s): %s; ETA at most %.0f s", epoch + 1, opt.max_epochs,
                 epoch_times[-1], total / max(epoch_times[-1], 1e-9), parts, left * float(np.mean(epoch_times)))
    return Fit(history, resumed_from, epoch_times)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


# --------------------------------------------------------------------------- entry points
def train_model(config: PipelineConfig, layout: RootLayout) -> TrainResult:
    """Train on the config's dataset store at its latest version (a rerun resumes its checkpoint)."""
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
    device = pick_device(cfg)
    set_determinism(cfg, device)
    lengths = np.diff(store.offsets)
    kind = resolve_kind(cfg.encoder, int(lengths.max()))
    context = context_frames_each_side(cfg.encoder, kind)
    crop = 1 if int(lengths.max()) == 1 else cfg.loader.crop_frames
    data = prepare(store, cfg, context, crop)

    targets: dict[str, np.ndarray] = {}
    for method in cfg.baselines:
        targets[method] = CrowdAggregate(method, store.n_classes).fit(data.labels).labels_
    key = train_key(store.version, cfg)
    run = RunFolder(layout.run_dir(config.name, key)).create()
    trainees = build_trainees(cfg, data, kind, store.n_annotators, store.n_classes, targets, device)
    log.info("training %s (%s encoder, %d context frames each side) and baselines %s on %s", cfg.head.kind,
             kind, context, list(targets), device)
    outcome = fit(trainees, data, cfg, device, run)

    metrics = best_metrics(trainees, outcome.history)
    main = trainees[0]
    net = cast(CrowdNet, main.net)
    model_dir = save_model(run.model_dir, net.state_dict(), model_spec(config, store, net, kind, crop, key))
    result = TrainResult(
        dataset=config.name, version=store.version, store=store.uri, key=key,
        head=cfg.head.kind, encoder=kind, context_frames=2 * context + 1, device=device,
        epochs=main.epochs, best_epoch=main.best_epoch + 1, resumed_from_epoch=outcome.resumed_from_epoch,
        annotators=store.annotators, classes=store.classes, class_names=store.class_names,
        n_train_frames=int(data.train_frames.sum()), n_val_frames=int(data.val_frames.sum()),
        n_test_frames=int(data.test_frames.sum()),
        model_dir=str(model_dir), checkpoint_dir=str(run.path), history_path=str(run.history_path),
        seconds=time.perf_counter() - t_start,
        train_frames_per_s=float(data.train_frames.sum() / np.mean(outcome.epoch_seconds))
        if outcome.epoch_seconds else None,
        model_run_id=None, metrics=metrics,
    )
    run.write_summary(result)
    return result


def best_metrics(trainees: list[Trainee], history: History) -> TrainMetrics:
    """Each trainee's metrics at its best epoch (its best weights loaded back); baselines by name."""
    best: dict[str, BestMetrics] = {}
    for t in trainees:
        if t.best_state is None:
            raise RuntimeError(f"{t.name}: no epoch improved on an infinite loss (did the loss become NaN?)")
        t.net.load_state_dict(t.best_state)
        best[t.name] = BestMetrics(**history[t.best_epoch][t.name].model_dump(), best_epoch=t.best_epoch + 1,
                                   epochs=t.epochs)
    main = best.pop(MAIN)
    return TrainMetrics(**main.model_dump(), **best)


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
