"""How good is a representation: every encoder's frozen embeddings probed for every target.

`probe_representations(config, layout, ...)` is the pure entry point (no Prefect, no MLflow):

1. the split is training's own (`tasks.train.split_frames` with the `train:` seed and fraction):
   probes fit on frames of the training sequences and are scored on the validation sequences
   plus the sequences with gold-only test frames and no crowd label, so no sequence is on both
   sides and the supervised encoder was never trained on a held-out label (`probe_split`);
2. targets per frame: `gold`, `consensus` (crowd-kit majority vote), `annotator` (who labelled,
   on frames with exactly one annotator) and `shuffled` (the consensus permuted at random within
   each side of the split: a control whose information is 0);
3. up to `max_train_frames` / `max_test_frames` frames are drawn and embedded by every encoder,
   reading only the crops that hold them (with their context, as in prediction);
4. per encoder and target: `tasks.probe.probe_target` (accuracy, chance, MI bound, bootstrap
   intervals, few-shot curve).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from configs.schema import PipelineConfig
from configs.train import TrainConfig
from errors import InputError
from storage.dataset_store import DatasetStore
from storage.files import atomic_write_json
from storage.layout import RootLayout
from storage.results.probe import ProbeFrames, ProbeResult, SimCLRResult, TargetProbe
from tasks import figures
from tasks.aggregate import CrowdAggregate
from tasks.encoders import Encoder, context_frames_each_side, resolve_kind
from tasks.loader import ChunkCache, WindowBatch, read_range, scan_features
from tasks.model import load_model
from tasks.probe import probe_target
from tasks.simclr import load_pretrained, pretrain_simclr, simclr_key
from tasks.train import FrameSplit, initial_encoder, pick_device, set_determinism, split_frames
from tasks.workers import process_pool, results_in_order, thread_limits, usable_cores

log = logging.getLogger(__name__)

NEEDS_FEATURES = "probing encoders needs per-frame features and this dataset has labels only"


TableRow = dict[str, str | int | float | None]
"""One row of the probe table (`probe_table.csv`, MLflow's `tables/probe.json`)."""


def open_for_probe(config: PipelineConfig, layout: RootLayout) -> DatasetStore:
    """The config's store at its latest version; a clear error when it cannot be probed."""
    uri = layout.dataset_uri(config.name)
    store = DatasetStore.open(uri)
    if not store.n_frames:
        raise InputError(uri, None, store.version, "the dataset store is empty (run `annostyle ingest` first)")
    if not store.has_features:
        raise InputError(uri, "features", None, NEEDS_FEATURES)
    return store


def probe_split(labels: np.ndarray, gold: np.ndarray, offsets: np.ndarray,
                train: TrainConfig, codes: np.ndarray | None = None) -> tuple[np.ndarray, FrameSplit]:
    """Bool per frame, true where the frame's sequence is held out from the probes; and training's split.

    Held out: training's validation sequences and the sequences holding gold-only test frames
    but no crowd label. A sequence with both crowd labels (which training used) and gold-only
    frames stays on the probes' training side, so no held-out label was trained on (training
    only chose its best epoch on the validation labels).
    """
    split = split_frames(labels, gold, offsets, train, codes)
    lengths = np.diff(offsets)
    trained_on = np.add.reduceat(split.train_frames.astype(np.int64), offsets[:-1]) > 0 if len(lengths) \
        else np.zeros(0, bool)
    held = split.eval_sequences & ~np.repeat(trained_on, lengths)
    return held, split


def frame_targets(labels: np.ndarray, gold: np.ndarray, held_out: np.ndarray, n_classes: int,
                  names: list[str], seed: int) -> dict[str, tuple[np.ndarray, int]]:
    """Every target per frame (-1 = none) with its number of classes.

    >>> t = frame_targets(np.array([[0, -1], [1, 1], [-1, 1]], np.int16), np.array([0, 1, -1], np.int16),
    ...                   np.array([False, False, True]), 2, ["gold", "annotator"], 0)
    >>> t["gold"][0].tolist(), t["annotator"][0].tolist()
    ([0, 1, -1], [0, -1, 1])
    """
    out: dict[str, tuple[np.ndarray, int]] = {}
    consensus = CrowdAggregate("mv", n_classes).fit(labels).labels_.astype(np.int64) \
        if {"consensus", "shuffled"} & set(names) else np.zeros(0, np.int64)
    for name in names:
        if name == "gold":
            out[name] = (gold.astype(np.int64), n_classes)
        elif name == "consensus":
            out[name] = (consensus, n_classes)
        elif name == "annotator":
            single = (labels >= 0).sum(axis=1) == 1
            out[name] = (np.where(single, (labels >= 0).argmax(axis=1), -1).astype(np.int64), labels.shape[1])
        elif name == "shuffled":
            y = consensus.copy()
            rng = np.random.default_rng([seed, 3])
            for side in (held_out, ~held_out):
                rows = np.flatnonzero(side & (y >= 0))
                y[rows] = y[rng.permutation(rows)]
            out[name] = (y, n_classes)
        else:
            raise ValueError(f"unknown probe target {name!r}")
    return out


WHAT = {"gold": "has a gold label", "consensus": "has a crowd label", "annotator": "has exactly one annotator",
        "shuffled": "has a crowd label"}


def why_not(name: str, y: np.ndarray, held_out: np.ndarray) -> str | None:
    """Why a target cannot be probed (None when it can)."""
    train, test = y[~held_out & (y >= 0)], y[held_out & (y >= 0)]
    if not (y >= 0).any():
        return f"no frame {WHAT[name]}"
    if len(np.unique(train)) < 2:
        return f"{len(np.unique(train))} class(es) among {len(train)} labelled training frames"
    if len(test) == 0:
        return "no labelled frame in the held-out sequences"
    return None


def draw(pool: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """At most `limit` of the frames where `pool` is true, sorted."""
    rows = np.flatnonzero(pool)
    return np.sort(rng.choice(rows, size=limit, replace=False)) if len(rows) > limit else rows


@torch.no_grad()
def embed_frames(encoders: dict[str, Encoder | None], store: DatasetStore, frames: np.ndarray, crop: int,
                 device: str, batch_frames: int = 16384) -> dict[str, np.ndarray]:
    """Embeddings of the (sorted) `frames` by every encoder; `None` means the raw features.

    Reads only the `crop`-frame ranges that hold a wanted frame (with the widest context any
    encoder needs), in order, so each Zarr chunk is decoded once and a few thousand frames drawn
    from a huge store cost a few thousand crops, not the store; each encoder sees the part of
    the window it was built for.
    """
    context = max([e.context for e in encoders.values() if e is not None], default=0)
    cache = ChunkCache(store.features)
    n_features = int(np.prod(store.features.shape[1:]))
    out = {name: np.zeros((len(frames), e.dim if e is not None else n_features), np.float32)
           for name, e in encoders.items()}
    ranges = np.unique(frames // crop)
    t0 = last = time.perf_counter()
    pending: list[WindowBatch] = []

    def flush() -> None:
        x = torch.from_numpy(np.concatenate([w.x for w in pending]))
        flat = np.concatenate([w.frames for w in pending]).reshape(-1)
        wanted = np.isin(flat, frames)  # padding (-1) is never wanted
        rows = np.searchsorted(frames, flat[wanted])
        for name, enc in encoders.items():
            if enc is None:
                z = x[:, context: context + crop]
            else:
                trim = context - enc.context
                z = enc(x[:, trim: x.shape[1] - trim].to(device)).float().cpu()
            out[name][rows] = z.reshape(-1, z.shape[-1]).numpy()[wanted]
        pending.clear()

    held = 0
    for i, r in enumerate(ranges):
        pending.append(read_range(store, int(r) * crop, min(store.n_frames, (int(r) + 1) * crop), context, crop, cache))
        held += pending[-1].frames.size
        if held >= batch_frames or i == len(ranges) - 1:
            flush()
            held = 0
            if time.perf_counter() - last > 10:
                rate = (i + 1) / (time.perf_counter() - t0)
                log.info("embedding: %d/%d ranges of %d frames, %.0f ranges/s, ETA %.0f s", i + 1, len(ranges),
                         crop, rate, (len(ranges) - i - 1) / rate)
                last = time.perf_counter()
    return out


def build_probed_encoders(config: PipelineConfig, store: DatasetStore, split: FrameSplit,
                          model_dirs: Mapping[str, Path], simclr_weights: Path | None, kind: str
                          ) -> dict[str, Encoder | None]:
    """The encoders the config names, frozen and in eval mode (raw features: None)."""
    encoders: dict[str, Encoder | None] = {}
    n_features = int(np.prod(store.features.shape[1:]))
    for name in config.probe.encoders:
        if name == "raw":
            encoders[name] = None
        elif name == "random":
            # the supervised encoder before training: same seed, same statistics (one pass over the store)
            enc_cfg = config.train.encoder.model_copy(update={"weights": None, "frozen": False})
            scan = scan_features(store.features, store.offsets, context_frames_each_side(enc_cfg, kind),
                                 split.train_frames)
            torch.manual_seed(config.train.seed)
            encoders[name] = initial_encoder(enc_cfg, scan, kind).freeze()
        elif name == "simclr":
            if simclr_weights is None:
                raise ValueError("the simclr encoder needs its pretrained weights")
            encoders[name] = load_pretrained(simclr_weights, config.train, n_features, kind)
        else:
            encoders[name] = load_model(model_dirs[name]).net.encoder.freeze()
    return encoders


def pretrain_encoder(config: PipelineConfig, layout: RootLayout) -> SimCLRResult:
    """SimCLR pretraining on every frame outside the probe's held-out sequences (labelled or not).

    The folder `layout.run_dir(dataset, "simclr-<key>")` is keyed on the dataset version, the
    encoder and SimCLR settings and the split, so a rerun finds a finished encoder and a retry
    after a crash resumes from the last epoch.
    """
    store = open_for_probe(config, layout)
    held_out, _ = probe_split(store.read_labels(), store.read_gold(), store.offsets, config.train,
                              store.read_split())
    key = simclr_key(store.version, config.train, config.probe.simclr, config.probe.seed, held_out)
    folder = layout.run_dir(config.name, f"simclr-{key}")
    log.info("SimCLR pretraining on %d frames (%d held-out frames left out) in %s", (~held_out).sum(),
             held_out.sum(), folder)
    summary = pretrain_simclr(store, config.train, config.probe.simclr, ~held_out, folder, config.probe.seed)
    return SimCLRResult(**summary.model_dump(), key=key, folder=str(folder), version=store.version,
                        n_frames=int((~held_out).sum()))


def probe_representations(config: PipelineConfig, layout: RootLayout, model_dirs: Mapping[str, Path] | None = None,
                          simclr: SimCLRResult | None = None,
                          model_run_ids: Mapping[str, str | None] | None = None) -> ProbeResult:
    """Probe every encoder of `config.probe` for every target.

    `model_dirs` maps `supervised` / `simclr_finetuned` to trained model folders; `simclr` is
    what `pretrain_encoder` returned (its `weights` are the pretrained encoder's state dict);
    `model_run_ids` names the MLflow runs that trained the models. The table, figures and
    summary are written to `layout.probe_dir(dataset, key)` (`result.outputs`).
    """
    t_start = time.perf_counter()
    pc = config.probe
    model_dirs = model_dirs or {}
    store = open_for_probe(config, layout)
    device = pick_device(config.train)
    set_determinism(config.train, device)
    labels, gold = store.read_labels(), store.read_gold()
    held_out, split = probe_split(labels, gold, store.offsets, config.train, store.read_split())
    longest = int(np.diff(store.offsets).max())
    kind = resolve_kind(config.train.encoder, longest)
    crop = 1 if longest == 1 else config.train.loader.crop_frames

    targets = frame_targets(labels, gold, held_out, store.n_classes, list(pc.targets), pc.seed)
    skipped = {name: reason for name, (y, _) in targets.items() if (reason := why_not(name, y, held_out))}
    for name, reason in skipped.items():
        log.warning("probe target %s skipped: %s", name, reason)
    usable = {name: t for name, t in targets.items() if name not in skipped}
    if not usable:
        raise InputError(store.uri, "probe.targets", list(pc.targets), "no target can be probed: "
                         + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    any_label = np.zeros(store.n_frames, bool)
    for y, _ in usable.values():
        any_label |= y >= 0
    rng = np.random.default_rng([pc.seed, 2])
    frames = np.union1d(draw(any_label & ~held_out, pc.linear.max_train_frames, rng),
                        draw(any_label & held_out, pc.linear.max_test_frames, rng))
    weights = Path(simclr.weights) if simclr else None
    encoders = build_probed_encoders(config, store, split, model_dirs, weights, kind)
    for enc in encoders.values():
        if enc is not None:
            enc.to(device)
    t0 = time.perf_counter()
    z = embed_frames(encoders, store, frames, crop, device)
    log.info("embedded %d frames with %s in %.1f s", len(frames), list(encoders), time.perf_counter() - t0)

    sequence = np.searchsorted(store.offsets, frames, side="right") - 1
    jobs, calls = [], []
    for target, (y_all, n_classes) in usable.items():
        y = y_all[frames]
        tr, te = (y >= 0) & ~held_out[frames], (y >= 0) & held_out[frames]
        for name in encoders:
            jobs.append((name, target))
            calls.append((z[name][tr], y[tr], sequence[tr], z[name][te], y[te], sequence[te], n_classes,
                          pc.linear, pc.seed))
    results: dict[str, dict[str, TargetProbe]] = {name: {} for name in encoders}
    for (name, target), (res, seconds) in zip(jobs, probe_all(calls, pc.workers), strict=True):
        results[name][target] = res
        log.info("probe %-16s %-10s accuracy %.3f (chance %.3f), MI >= %.3f of H %.3f nats (%.1f s)", name,
                 target, res.accuracy, res.chance, res.mutual_information, res.entropy, seconds)
    names = list(encoders)
    first = names[0]
    dirs = {k: str(v) for k, v in model_dirs.items()}
    digest = hashlib.sha256(json.dumps({"probe": pc.model_dump(mode="json", exclude={"workers"}), "train": config.train.model_dump(
        mode="json"), "models": dirs, "simclr": str(weights)}, sort_keys=True,
        default=str).encode()).hexdigest()[:12]
    out = layout.probe_dir(config.name, f"{store.version}-{digest}")
    result = ProbeResult(
        dataset=config.name, version=store.version, store=store.uri, encoder_kind=kind,
        encoders=names, targets=list(usable), skipped_targets=skipped,
        probe_accuracy={e: {t: results[e][t].accuracy for t in usable} for e in names},
        mutual_information={e: {t: results[e][t].mutual_information for t in usable} for e in names},
        chance={t: results[first][t].chance for t in usable},
        entropy={t: results[first][t].entropy for t in usable},
        results=results,
        n_probe_frames=ProbeFrames(train=int((~held_out[frames]).sum()), test=int(held_out[frames].sum())),
        held_out_sequences=len(np.unique(sequence[held_out[frames]])),
        model_dirs=dirs, simclr=simclr, model_run_ids=dict(model_run_ids or {}),
        outputs=str(out), seconds=time.perf_counter() - t_start)
    write_outputs(result)
    return result


def probe_all(calls: list[tuple[Any, ...]], workers: int | None) -> list[tuple[TargetProbe, float]]:
    """`probe_target(*call)` for every call, with its seconds, in call order: in `workers`
    processes (default: one per usable core) when there are several probes and cores."""
    n = min(len(calls), workers or usable_cores())
    if n < 2:
        with thread_limits(1):
            return [timed_probe(*call) for call in calls]
    log.info("fitting %d probes in %d processes", len(calls), n)
    with process_pool(n) as pool:
        return results_in_order(pool, timed_probe, calls)


def timed_probe(*call: Any) -> tuple[TargetProbe, float]:
    """`probe_target(*call)` and the seconds it took."""
    t0 = time.perf_counter()
    return probe_target(*call), time.perf_counter() - t0


def probe_table(result: ProbeResult) -> list[TableRow]:
    """One row per encoder and target: accuracy, chance, MI bound and intervals, few-shot accuracies."""
    rows = []
    for enc in result.encoders:
        for t in result.targets:
            r = result.results[enc][t]
            acc_low, acc_high = r.interval.accuracy or (None, None)
            mi_low, mi_high = r.interval.mutual_information or (None, None)
            row: TableRow = {
                "encoder": enc, "target": t, "accuracy": r.accuracy, "accuracy_low": acc_low,
                "accuracy_high": acc_high, "chance": r.chance, "mutual_information": r.mutual_information,
                "mi_low": mi_low, "mi_high": mi_high, "entropy": r.entropy,
                "cross_entropy": r.cross_entropy, "n_train": r.n_train, "n_test": r.n_test,
                "n_test_groups": r.n_test_groups}
            row.update({f"few_shot_{f}": v for f, v in r.few_shot.items()})
            rows.append(row)
    return rows


def write_outputs(result: ProbeResult) -> None:
    """`probe_table.csv`, `summary.json` and the figures (`figures/probe.png`, `few_shot.png`,
    `simclr_loss.png`) in `result.outputs`."""
    out = Path(result.outputs)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    rows = probe_table(result)
    with open(out / "probe_table.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    save_summary(result)
    figures.save(figures.probe_bars(result), out / "figures" / "probe.png")
    figures.save(figures.few_shot_curves(result), out / "figures" / "few_shot.png")
    if result.simclr:
        history = result.simclr.history
        figures.save(figures.loss_curve([h.epoch for h in history], [h.loss for h in history],
                                        result.simclr.chance_loss,
                                        "SimCLR NT-Xent per epoch (dashed: an encoder that knows nothing)"),
                     out / "figures" / "simclr_loss.png")


def save_summary(result: ProbeResult) -> None:
    """The result as `summary.json` in its outputs folder (again once the MLflow run id is known)."""
    atomic_write_json(Path(result.outputs) / "summary.json", result.to_json(), indent=2)
