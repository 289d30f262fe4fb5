"""Fine-tune a trained head for annotators who joined after training, with the encoder frozen.

The encoder's embeddings of the labelled frames are computed once; the head (its annotator
embedding grown by one row per new annotator) is then trained on them for a few epochs with its
own masked loss. Every annotator's labels take part, so the old annotators' rows stay fitted.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from configs.schema import PipelineConfig
from errors import InputError
from storage.dataset_store import DatasetStore
from storage.layout import RootLayout
from storage.model_store import RunFolder, save_model
from storage.results.train import FinetuneMetrics, FinetuneResult
from tasks.heads import head_spec
from tasks.model import TrainedModel, load_model

log = logging.getLogger(__name__)

MAX_FINETUNE_FRAMES = 200_000
"""Frames whose embeddings are held in memory while fine-tuning (every frame of a new annotator is kept)."""


def finetune_new_annotators(config: PipelineConfig, layout: RootLayout, model_dir: Path, store: DatasetStore,
                            epochs: int = 30, batch_size: int = 512, lr: float = 3e-3) -> FinetuneResult:
    """A copy of the model at `model_dir` extended to every annotator of `store`, in the run
    folder `<model key>+ft-<store version>`."""
    model = load_model(model_dir)
    old, now = model.annotators, store.annotators
    if now[: len(old)] != old:
        raise InputError(store.uri, "annotators", now, f"the model's annotators {old} are not a prefix of the store's")
    new = now[len(old):]
    torch.manual_seed(config.train.seed)
    rng = np.random.default_rng(config.train.seed)
    t0 = time.perf_counter()

    labels = store.read_labels()
    frames = np.flatnonzero((labels >= 0).any(axis=1))
    if len(frames) > MAX_FINETUNE_FRAMES:  # keep every frame a new annotator labelled, sample the rest
        mine = np.flatnonzero((labels[frames, len(old):] >= 0).any(axis=1))
        rest = np.setdiff1d(np.arange(len(frames)), mine)
        keep = np.concatenate([mine, rng.choice(rest, max(0, MAX_FINETUNE_FRAMES - len(mine)), replace=False)])
        frames = frames[np.sort(keep)]
    z = _embed(model, store, frames)
    y = torch.from_numpy(labels[frames].astype(np.int64))

    head = model.net.head
    head.add_annotators(len(new))
    head.train()
    optimiser = torch.optim.Adam(head.parameters(), lr=lr)
    losses = []
    for epoch in range(epochs):
        order = torch.from_numpy(rng.permutation(len(frames)))
        total = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i: i + batch_size]
            loss = head.loss(z[idx], y[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(frames))
        log.info("fine-tuning for %d new annotator(s): epoch %d/%d loss %.4f", len(new), epoch + 1, epochs, losses[-1])
    head.eval()
    with torch.no_grad():
        predicted = head.annotator_logits(z).argmax(-1).numpy()
    mask = labels[frames] >= 0
    per_annotator = {a: float((predicted[:, i] == labels[frames, i])[mask[:, i]].mean()) if mask[:, i].any() else None
                     for i, a in enumerate(now)}

    key = f"{model.spec.key}+ft-{store.version}"
    spec = model.spec.model_copy(update={
        "annotators": now, "n_annotators": len(now), "model_run_id": None, "key": key, "version": store.version,
        "finetuned_from": str(model_dir), "head": head_spec(model.spec.head, head)})
    out = save_model(RunFolder(layout.run_dir(config.name, key)).model_dir, model.net.state_dict(), spec)
    return FinetuneResult(
        dataset=config.name, version=store.version, store=store.uri, key=key, head=model.head, device="cpu",
        epochs=epochs, model_dir=str(out), finetuned_from=str(model_dir), new_annotators=new, annotators=now,
        n_frames=int(len(frames)), loss=losses, seconds=time.perf_counter() - t0,
        metrics=FinetuneMetrics(train_accuracy_per_annotator=per_annotator), model_run_id=None)


def _embed(model: TrainedModel, store: DatasetStore, frames: np.ndarray, block: int = 65536) -> torch.Tensor:
    """Frozen-encoder embeddings of the given frames, predicted range by range."""
    out = []
    for start in range(0, store.n_frames, block):
        stop = min(store.n_frames, start + block)
        inside = frames[(frames >= start) & (frames < stop)]
        if len(inside):
            emb = model.predict(store, int(inside[0]), int(inside[-1]) + 1)["embeddings"]
            out.append(emb[inside - inside[0]])
    return torch.from_numpy(np.concatenate(out))

