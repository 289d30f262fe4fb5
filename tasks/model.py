"""A trained model: the network, how it is built from a spec, and the inference API.

The model-folder format (`weights.pt`, `model.json`) is the model store's
(`storage.model_store`); this module builds the network a `ModelSpec` describes and loads it:

    model = load_model(Path(result.model_dir))
    out = model.predict(store, 0, 10_000)   # logits (n, R, C), embeddings (n, d), consensus (n, C)
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch
from torch import nn

from configs.train import EncoderConfig
from errors import InputError
from storage.dataset_store import DatasetStore
from storage.model_store import ModelSpec, load_weights, read_spec
from tasks.encoders import Encoder, build_encoder
from tasks.heads import AnnotatorHead, ClassifierHead, build_head
from tasks.loader import ChunkCache, read_range


class CrowdNet(nn.Module):
    """Encoder plus annotator head: windows (B, T + 2k, F) -> per-annotator logits (B, T, R, C)."""

    encoder: Encoder
    head: AnnotatorHead

    def __init__(self, encoder: Encoder, head: AnnotatorHead) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x)
        b, t, d = z.shape
        return self.head.annotator_logits(z.reshape(b * t, d)).reshape(b, t, self.head.n_annotators, -1)


class BaselineNet(nn.Module):
    """Encoder plus one classifier (the MV and DS baselines): windows -> log-probabilities (B, T, C)."""

    encoder: Encoder
    head: ClassifierHead

    def __init__(self, encoder: Encoder, head: ClassifierHead) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x)
        b, t, d = z.shape
        return self.head.consensus_logits(z.reshape(b * t, d)).reshape(b, t, -1)


def build_net(spec: ModelSpec) -> CrowdNet:
    """The (untrained) network a spec describes."""
    enc_cfg = EncoderConfig.model_validate({**spec.encoder, "weights": None, "frozen": False})
    encoder = build_encoder(enc_cfg, spec.n_features, kind=spec.encoder_kind)
    return CrowdNet(encoder, build_head(spec.head, encoder.dim, spec.n_annotators, spec.n_classes))


class TrainedModel:
    """A loaded model, in eval mode, with the inference API the predict stage uses.

    Attributes: `annotators`, `classes`, `class_names`, `head` (kind), `model_run_id`,
    `annotator_embeddings` (n_annotators, e) float32, `context` (frames each side), `spec`.
    """

    def __init__(self, net: CrowdNet, spec: ModelSpec, device: str = "cpu") -> None:
        self.net = net.to(device).eval()
        self.spec, self.device = spec, device
        self.annotators: list[str] = list(spec.annotators)
        self.classes: list[str] = list(spec.classes)
        self.class_names: list[str] = list(spec.class_names or spec.classes)
        self.head: str = spec.head.kind
        self.model_run_id: str | None = spec.model_run_id
        self.context: int = net.encoder.context
        self.crop: int = spec.crop
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
        if n_feat != self.spec.n_features:
            raise InputError(store.uri, "features", n_feat,
                             f"the model was trained on {self.spec.n_features} features per frame")
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
    """Load a model folder written by training (`TrainResult.model_dir`); InputError when there is none."""
    spec = read_spec(Path(model_dir))
    net = build_net(spec)
    net.load_state_dict(load_weights(Path(model_dir)))
    return TrainedModel(net, spec, device)
