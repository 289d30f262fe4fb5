"""A trained network is logged to MLflow as a torch.export graph, or not at all: a network that
does not export is an error naming it and why, never a pickle (loading one runs code).

The demo's temporal-conv model and the MLP export in tests/test_train_flow.py and
tests/test_train_digits.py (their logged models are loaded back and run there)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from storage.layout import RootLayout
from storage.model_store import LoggedModel
from storage.tracking import stage_run
from storage.tracking.train import _log_pytorch_model


class Exports(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class BranchesOnData(Exports):
    """Control flow on a tensor's value: torch.export cannot trace it into one graph."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.linear(x)
        return -self.linear(x)


def logged(net: torch.nn.Module) -> LoggedModel:
    example = np.ones((4, 3), np.float32)
    return LoggedModel(net, example, net(torch.from_numpy(example)).detach().numpy())


def test_a_network_that_exports_is_logged_as_a_graph(tmp_path: Path) -> None:
    with stage_run(RootLayout(tmp_path), "toy", "train", {}) as run:
        _log_pytorch_model(logged(Exports()), "toy")
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/model", dst_path=str(tmp_path)))
    assert (local / "data" / "model.pt2").is_file()  # torch.export's archive
    assert not list(local.rglob("*.pth")) and not list(local.rglob("*.pkl"))  # no pickle beside it
    out = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")(torch.ones(5, 3))
    assert tuple(out.shape) == (5, 2)


def test_a_network_that_does_not_export_is_an_error_and_no_pickle_is_logged(tmp_path: Path) -> None:
    expected = r"BranchesOnData network \(head x, run folder y\) cannot be exported with torch.export, so it is not"
    with pytest.raises(RuntimeError, match=expected + r" logged: \w+"), \
            stage_run(RootLayout(tmp_path), "toy", "train", {}) as run:
        _log_pytorch_model(logged(BranchesOnData()), "head x, run folder y")
    assert MlflowClient().get_run(run.info.run_id).info.status == "FAILED"
    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert [m for m in models if m.source_run_id == run.info.run_id and m.status == "READY"] == []
