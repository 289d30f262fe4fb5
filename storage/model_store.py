"""The model store: what a training run's folder and a model folder hold, written and read here only.

A run folder (`RootLayout.run_dir(dataset, key)`) holds:

    checkpoint.pt   the last epoch's state of every trainee (resume after a crash)
    history.json    per-epoch metrics of every model
    summary.json    the finished run's `TrainResult`
    model/          the model folder of the best annotator model

A model folder holds `weights.pt` (a state dict: `torch.save`, read back with
`torch.load(..., weights_only=True)`) and `model.json` (`ModelSpec`: everything needed to rebuild
the network and read its outputs). The spec is written last and atomically, so a folder with a
`model.json` is complete; `set_model_run_id` records the MLflow run that logged the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from configs.train import HeadConfig
from errors import InputError
from storage.files import atomic_write, atomic_write_json
from storage.results.train import EpochMetrics, TrainResult

WEIGHTS = "weights.pt"
SPEC = "model.json"
CHECKPOINT = "checkpoint.pt"
HISTORY = "history.json"
FIGURES = "figures"
SUMMARY = "summary.json"
MODEL = "model"

State = dict[str, torch.Tensor]
"""A network's state dict."""

History = list[dict[str, EpochMetrics]]
"""A run's history: per epoch (index = epoch, 0-based) the metrics of each model that trained in it."""


class ModelSpec(BaseModel):
    """`model.json`: how to rebuild a network and read its outputs (written by training and fine-tuning)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    format: str = "annostyle.model"
    format_version: int = 1
    dataset: str
    version: str  # the dataset version it was trained (or fine-tuned) on
    store: str
    key: str  # the run folder's key
    encoder_kind: str
    encoder: dict[str, Any]  # JSON boundary: the encoder config as trained (its weights file may be gone)
    head: HeadConfig  # the head's config, its options as the head is now (`AnnotatorHead.spec_options`)
    n_features: int
    feature_shape: list[int]
    n_annotators: int
    n_classes: int
    annotators: list[str]
    classes: list[str]
    class_names: list[str] | None = None
    crop: int = 128
    model_run_id: str | None = None
    finetuned_from: str | None = None


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash leaves the old file or the new one."""
    atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))


# ------------------------------------------------------------------------------ model folders
def has_model(model_dir: Path) -> bool:
    """Whether `model_dir` holds a complete model (its spec is written last)."""
    return (Path(model_dir) / SPEC).is_file()


def model_files(model_dir: Path) -> tuple[Path, Path]:
    """The weights and spec files of a model folder (e.g. to key a cache on their stat)."""
    return Path(model_dir) / WEIGHTS, Path(model_dir) / SPEC


def read_spec(model_dir: Path) -> ModelSpec:
    """The spec of a model folder; InputError when there is no model."""
    path = Path(model_dir) / SPEC
    if not path.is_file():
        raise InputError(model_dir, None, str(model_dir), "no trained model here (run `annostyle train` first)")
    return ModelSpec.model_validate_json(path.read_text())


def write_spec(model_dir: Path, spec: ModelSpec) -> None:
    atomic_write_json(Path(model_dir) / SPEC, spec.model_dump(mode="json"), indent=2, default=str)


def set_model_run_id(model_dir: Path, run_id: str) -> None:
    """Record the MLflow run that logged this model in its spec."""
    spec = read_spec(model_dir)
    spec.model_run_id = run_id
    write_spec(model_dir, spec)


def save_model(model_dir: Path, state: State, spec: ModelSpec) -> Path:
    """Write weights and spec; the spec last, atomically: a folder with model.json is complete."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    atomic_save({k: v.detach().cpu() for k, v in state.items()}, model_dir / WEIGHTS)
    write_spec(model_dir, spec)
    return model_dir


def load_weights(model_dir: Path) -> State:
    """The state dict of a model folder, on the CPU (`weights_only=True`: tensors, no code)."""
    state: State = torch.load(Path(model_dir) / WEIGHTS, map_location="cpu", weights_only=True)
    return state


# ------------------------------------------------------------------------------ run folders
@dataclass(frozen=True)
class RunFolder:
    """One training run's folder (`RootLayout.run_dir(dataset, key)`) and the files in it."""

    path: Path

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def history_path(self) -> Path:
        return self.path / HISTORY

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY

    @property
    def figures_dir(self) -> Path:
        """The training's figures (PNG), drawn by the train stage and logged with its MLflow run."""
        return self.path / FIGURES

    def create(self) -> RunFolder:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    # checkpoint: the trainees' states, written after every epoch
    def save_checkpoint(self, checkpoint: dict[str, Any]) -> None:  # JSON boundary: torch.save's nested dict
        """torch.save to a temporary file, then rename: a crash leaves the old checkpoint or the new one."""
        atomic_save(checkpoint, self.checkpoint_path)

    def load_checkpoint(self, device: str) -> dict[str, Any] | None:  # JSON boundary: torch.load's nested dict
        """The last checkpoint (tensors only, on `device`), None when there is none."""
        if not self.checkpoint_path.is_file():
            return None
        checkpoint: dict[str, Any] = torch.load(self.checkpoint_path, map_location=device, weights_only=True)
        return checkpoint

    # history.json: one entry per epoch, {"epoch": e, <model name>: <its EpochMetrics>, ...}
    def read_history(self, epochs: int | None = None) -> History:
        """The first `epochs` epochs of the history (all when None); [] when there is none."""
        if not self.history_path.is_file():
            return []
        entries: list[dict[str, Any]] = json.loads(self.history_path.read_text())  # JSON boundary: history.json
        return [{name: EpochMetrics.model_validate(m) for name, m in entry.items() if name != "epoch"}
                for entry in (entries if epochs is None else entries[:epochs])]

    def write_history(self, history: History) -> None:
        entries = [{"epoch": epoch, **{name: m.model_dump(mode="json") for name, m in models.items()}}
                   for epoch, models in enumerate(history)]
        atomic_write_json(self.history_path, entries, default=float)

    # summary: the finished run's result
    def write_summary(self, result: TrainResult) -> None:
        atomic_write_json(self.summary_path, result.to_json(), indent=2, default=float)

    def read_summary(self) -> TrainResult | None:
        """The finished run's result, None when the run did not finish."""
        if not self.summary_path.is_file():
            return None
        return TrainResult.model_validate_json(self.summary_path.read_text())

    def finished_model(self) -> tuple[TrainResult, ModelSpec] | None:
        """The finished run's result and its model's spec, when the run finished and wrote a model."""
        result = self.read_summary()
        model_dir = Path(result.model_dir) if result is not None and result.model_dir else self.model_dir
        if result is None or not has_model(model_dir):  # a multi-seed summary names its saved seed's model
            return None
        return result, read_spec(model_dir)



@dataclass(frozen=True)
class LoggedModel:
    """A network as the tracking store logs it: the module and a real example input with its output
    (the signature is inferred from them)."""

    net: torch.nn.Module
    example: np.ndarray
    output: np.ndarray
