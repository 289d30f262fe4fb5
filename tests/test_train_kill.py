"""A training process killed with SIGKILL after its first checkpoint resumes from it and ends with
exactly the result of an uninterrupted run (same epochs, same metrics, bit-identical weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, kill_when_written

from configs.schema import load_config
from storage.layout import RootLayout
from storage.model_store import CHECKPOINT
from tasks.ingest import ingest
from tasks.train import train_model

# a small demo, the temporal encoder, CoNAL with one baseline, no early stop: 6 epochs of ~0.5 s
OVERRIDES = {
    "source": {"n_sequences": 12, "sequence_length": 500},
    "train": {"threads": 1, "head": {"kind": "conal"}, "baselines": ["mv"],
              "optim": {"max_epochs": 6, "patience": 6}, "checkpoint_every_s": 0},
}
TRAIN = """
import json, sys
from pathlib import Path
from configs.schema import load_config
from storage.layout import RootLayout
from tasks.train import train_model
config = load_config({config!r}, json.loads({overrides!r}))
print(json.dumps(train_model(config, RootLayout(Path({root!r}))).metrics.val_loss))
"""


def checkpoint_epoch(folder: Path) -> int | None:
    files = list(folder.glob(f"models/demo/*/{CHECKPOINT}"))
    if not files:
        return None
    return int(torch.load(files[0], weights_only=True)["epoch"])


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_resumes_and_matches_an_uninterrupted_run(tmp_path):
    config = load_config(CONFIGS / "demo.yaml", OVERRIDES)
    roots = {"killed": tmp_path / "killed", "reference": tmp_path / "reference"}
    for root in roots.values():
        ingest(config, RootLayout(root))

    code = TRAIN.format(config=str(CONFIGS / "demo.yaml"), overrides=json.dumps(OVERRIDES),
                        root=str(roots["killed"]))
    kill_when_written(code, roots["killed"], f"models/demo/*/{CHECKPOINT}")
    killed_at = checkpoint_epoch(roots["killed"])
    assert killed_at is not None and killed_at < 5, "the kill must land between the first and the last epoch"

    resumed = train_model(config, RootLayout(roots["killed"]))
    reference = train_model(config, RootLayout(roots["reference"]))
    assert resumed.resumed_from_epoch == killed_at + 1 and reference.resumed_from_epoch is None
    assert resumed.epochs == reference.epochs == 6
    assert resumed.metrics == reference.metrics
    history = [json.loads(Path(s.history_path).read_text()) for s in (resumed, reference)]
    assert history[0] == history[1]
    weights = [torch.load(Path(s.model_dir) / "weights.pt", weights_only=True) for s in (resumed, reference)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
