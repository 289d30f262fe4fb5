"""A trained model: the network, how it is saved and loaded, and the inference API.

A model folder holds `weights.pt` (a state dict: `torch.save`, read back with
`torch.load(..., weights_only=True)`) and `model.json` (everything needed to rebuild the network
and read its outputs: encoder and head configs, feature count, annotators, classes, the dataset
version it was trained on and the MLflow run that logged it).

    model = load_model(Path(summary["model_dir"]))
    out = model.predict(store, 0, 10_000)   # logits (n, R, C), embeddings (n, d), consensus (n, C)
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from configs.train import EncoderConfig, HeadConfig
from errors import InputError
from storage.dataset_store import DatasetStore
from storage.files import atomic_write, atomic_write_json
from tasks.encoders import Encoder, build_encoder
from tasks.heads import AnnotatorHead, ClassifierHead, build_head
from tasks.loader import ChunkCache, read_range

WEIGHTS = "weights.pt"
SPEC = "model.json"


class CrowdNet(nn.Module):
    """Encoder plus annotator head: windows (B, T + 2k, F) -> per-annotator logits (B, T, R, C)."""

    def __init__(self, encoder: Encoder, head: AnnotatorHead) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x)
        b, t, d = z.shape
        return self.head.annotator_logits(z.reshape(b * t, d)).reshape(b, t, self.head.n_annotators, -1)


class BaselineNet(nn.Module):
    """Encoder plus one classifier (the MV and DS baselines): windows -> log-probabilities (B, T, C)."""

    def __init__(self, encoder: Encoder, head: ClassifierHead) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x)
        b, t, d = z.shape
        return self.head.consensus_logits(z.reshape(b * t, d)).reshape(b, t, -1)


def save_model(net: CrowdNet, spec: dict[str, Any], model_dir: Path) -> Path:
    """Write weights and spec; the spec last, atomically: a folder with model.json is complete."""
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    atomic_write(model_dir / WEIGHTS, lambda tmp: torch.save(state, tmp))
    write_spec(model_dir, spec)
    return model_dir


def write_spec(model_dir: Path, spec: dict[str, Any]) -> None:
    atomic_write_json(model_dir / SPEC, spec, indent=2, default=str)


def set_model_run_id(model_dir: Path, run_id: str) -> None:
    """Record the MLflow run that logged this model in its spec."""
    spec = json.loads((model_dir / SPEC).read_text())
    spec["model_run_id"] = run_id
    write_spec(model_dir, spec)


def build_net(spec: dict[str, Any]) -> CrowdNet:
    """The (untrained) network a spec describes."""
    enc_cfg = EncoderConfig.model_validate({**spec["encoder"], "weights": None, "frozen": False})
    encoder = build_encoder(enc_cfg, spec["n_features"], kind=spec["encoder_kind"])
    head = build_head(HeadConfig.model_validate(spec["head"]), encoder.dim, spec["n_annotators"],
                      spec["n_classes"])
    return CrowdNet(encoder, head)


class TrainedModel:
    """A loaded model, in eval mode, with the inference API the predict stage uses.

    Attributes: `annotators`, `classes`, `class_names`, `head` (kind), `model_run_id`,
    `annotator_embeddings` (n_annotators, e) float32, `context` (frames each side), `spec`.
    """

    def __init__(self, net: CrowdNet, spec: dict[str, Any], device: str = "cpu") -> None:
        self.net = net.to(device).eval()
        self.spec, self.device = spec, device
        self.annotators: list[str] = list(spec["annotators"])
        self.classes: list[str] = list(spec["classes"])
        self.class_names: list[str] = list(spec.get("class_names") or spec["classes"])
        self.head: str = spec["head"]["kind"]
        self.model_run_id: str | None = spec.get("model_run_id")
        self.context: int = net.encoder.context
        self.crop: int = int(spec.get("crop", 128))
        self.annotator_embeddings = net.head.annotator_embeddings().cpu().numpy().astype(np.float32)
        self._cache: tuple[tuple[str, str], ChunkCache] | None = None
        self._lock = threading.Lock()

    def _chunks(self, store: DatasetStore) -> ChunkCache:
        """A chunk cache per store version: ranges predicted in order decode each chunk once."""
        key = (store.uri, store.version)
        with self._lock:
            if self._cache is None or self._cache[0] != key:
                self._cache = (key, ChunkCache(store.features))
            return self._cache[1]

    @torch.no_grad()
    def predict(self, store: DatasetStore, start: int, stop: int, batch_frames: int = 16384) -> dict[str, np.ndarray]:
        """Outputs for frames [start, stop): `logits` (n, n_annotators, n_classes) for every annotator,
        `embeddings` (n, dim) and `consensus` (n, n_classes) probabilities, all float32.

        Reads the context frames it needs beyond the range itself, so [a, b) then [b, c) equals
        [a, c). Per-annotator logits of CoNAL are log-probabilities.
        """
        n_feat = int(np.prod(store.features.shape[1:]))
        if n_feat != self.spec["n_features"]:
            raise InputError(store.uri, "features", n_feat,
                             f"the model was trained on {self.spec['n_features']} features per frame")
        windows = read_range(store, start, stop, self.context, self.crop, self._chunks(store))
        n = stop - start
        d, r, c = self.net.encoder.dim, len(self.annotators), len(self.classes)
        out = {"logits": np.empty((n, r, c), np.float32), "embeddings": np.empty((n, d), np.float32),
               "consensus": np.empty((n, c), np.float32)}
        step = max(1, batch_frames // self.crop)
        for i in range(0, len(windows.frames), step):
            frames = windows.frames[i: i + step]
            x = torch.from_numpy(windows.x[i: i + step]).to(self.device)
            z = self.net.encoder(x)
            keep = torch.from_numpy(frames.reshape(-1) >= 0).to(self.device)
            z = z.reshape(-1, d)[keep]
            rows = frames.reshape(-1)[frames.reshape(-1) >= 0] - start
            out["embeddings"][rows] = z.float().cpu().numpy()
            out["logits"][rows] = self.net.head.annotator_logits(z).float().cpu().numpy()
            out["consensus"][rows] = torch.exp(self.net.head.consensus_logits(z)).float().cpu().numpy()
        return out


def load_model(model_dir: Path, device: str = "cpu") -> TrainedModel:
    """Load a model folder written by training (`summary["model_dir"]`)."""
    model_dir = Path(model_dir)
    if not (model_dir / SPEC).is_file():
        raise InputError(model_dir, None, str(model_dir), "no trained model here (run `annostyle train` first)")
    spec = json.loads((model_dir / SPEC).read_text())
    net = build_net(spec)
    net.load_state_dict(torch.load(model_dir / WEIGHTS, map_location="cpu", weights_only=True))
    return TrainedModel(net, spec, device)
