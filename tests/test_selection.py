"""Splits and model selection: test labels never reach training or selection, validation items
never train, the split has its own seed, bad split settings are clear errors, several seeds in one
command (side by side in processes: the same models, and none left behind by a kill), and the
in-memory feed equals the chunked one for frame data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_batch, processes_of
from labelme_data import labelme_batch

from configs.schema import PipelineConfig, StoreConfig
from configs.splits import SPLIT_CODES
from configs.train import TrainConfig
from errors import InputError
from storage.dataset_store import open_or_create
from storage.layout import RootLayout
from tasks.train import min_epochs, selection_rule, split_frames, train_model

SHORT = {"threads": 1, "baselines": ["ds"], "compare_heads": ["crowd_layer"],
         "optim": {"max_epochs": 4, "patience": 4}, "checkpoint_every_s": 0}


def labelme_root(root: Path, gold: np.ndarray | None = None) -> RootLayout:
    batch = labelme_batch(gold=gold)
    layout = RootLayout(root)
    store = open_or_create(layout.dataset_uri("labelme"), StoreConfig(), batch.classes, None)
    store.append(batch, progress=False)
    return layout


def config(train: dict) -> PipelineConfig:
    return PipelineConfig.model_validate({"name": "labelme", "source": {"kind": "demo"}, "train": train})


def weights(result) -> dict[str, torch.Tensor]:
    return torch.load(Path(result.model_dir) / "weights.pt", weights_only=True)


def same_weights(a, b) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def labelme_runs(tmp_path_factory):
    """LabelMe trained three times: as published, every test gold label changed, every
    validation gold label changed."""
    gold = labelme_batch().gold
    split = labelme_batch().split
    rng = np.random.default_rng(0)
    shifted = {}
    for name, code in (("test", SPLIT_CODES["test"]), ("valid", SPLIT_CODES["valid"])):
        g = gold.copy()
        rows = split == code
        g[rows] = (g[rows] + rng.integers(1, 8, size=int(rows.sum()))) % 8  # every label changed
        shifted[name] = g
    out = {}
    for name, g in (("published", None), ("test", shifted["test"]), ("valid", shifted["valid"])):
        layout = labelme_root(tmp_path_factory.mktemp(name), g)
        out[name] = train_model(config(SHORT), layout)
    return out


@pytest.mark.slow
def test_changing_every_test_gold_label_changes_no_model_and_no_selection(labelme_runs):
    ref, changed = labelme_runs["published"], labelme_runs["test"]
    assert ref.split == "data" and ref.selection == "gold"
    assert (ref.n_train_frames, ref.n_val_gold_frames, ref.n_test_frames) == (1000, 500, 1188)
    assert ref.n_val_frames == 0  # LabelMe's validation images carry gold only
    assert same_weights(ref, changed)
    assert Path(ref.history_path).read_text() == Path(changed.history_path).read_text()
    for name in ref.metrics.models():
        a, b = ref.metrics.models()[name], changed.metrics.models()[name]
        own = {"test_accuracy", "heads", "mv", "ds"}  # the main model's entry also nests the others
        assert a.model_dump(exclude=own) == b.model_dump(exclude=own), name
        # the figure itself does read the test gold: with every label wrong it collapses
        assert a.test_accuracy > 0.5 and b.test_accuracy < 0.2, name


@pytest.mark.slow
def test_changing_the_validation_gold_changes_selection_only(labelme_runs):
    ref, changed = labelme_runs["published"], labelme_runs["valid"]
    # the validation gold is what selection reads: its curve changes (the check above can fail)
    a = [e["model"].val_gold_accuracy for e in _history(ref)]
    b = [e["model"].val_gold_accuracy for e in _history(changed)]
    assert a != b and max(b) < 0.3
    # and nothing trains on it: each epoch's training loss is the same
    assert [e["model"].train_loss for e in _history(ref)] == [e["model"].train_loss for e in _history(changed)]


def _history(result):
    from storage.model_store import RunFolder

    return RunFolder(Path(result.checkpoint_dir)).read_history()


# ------------------------------------------------------------------------------- the split
def _toy(n_seq: int = 40, codes: bool = True):
    """40 one-frame items: 24 train, 8 valid (crowd labels and gold), 8 test (gold only)."""
    labels = np.full((n_seq, 3), -1, np.int16)
    labels[:32, 0] = 1
    gold = np.ones(n_seq, np.int16)
    split = np.array([0] * 24 + [1] * 8 + [2] * 8, np.int8) if codes else None
    labels[32:] = -1
    return labels, gold, np.arange(n_seq + 1), split


def test_data_split_keeps_valid_and_test_out_of_training():
    labels, gold, offsets, codes = _toy()
    s = split_frames(labels, gold, offsets, TrainConfig(), codes)
    assert s.kind == "data"
    assert s.train_frames.sum() == 24 and not s.train_frames[24:].any()
    assert s.val_frames.sum() == 8 and s.val_gold_frames.sum() == 8 and s.val_frames[24:32].all()
    assert s.test_frames.sum() == 8 and s.test_frames[32:].all()
    assert selection_rule(TrainConfig(), s) == "gold"


def test_random_split_has_its_own_seed():
    labels, gold, offsets, _ = _toy(codes=False)
    base = split_frames(labels, gold, offsets, TrainConfig())
    assert base.kind == "random" and base.test_frames.sum() == 8  # gold and no crowd label
    other_init = split_frames(labels, gold, offsets, TrainConfig(seed=7))
    other_split = split_frames(labels, gold, offsets, TrainConfig.model_validate({"split": {"split_seed": 7}}))
    assert np.array_equal(base.val_frames, other_init.val_frames)  # the init seed does not redraw the split
    assert not np.array_equal(base.val_frames, other_split.val_frames)
    assert not (base.val_frames & base.train_frames).any() and base.val_frames.sum() == round(0.2 * 32)


def test_no_split_trains_on_every_crowd_item_and_keeps_the_last_epoch():
    labels, gold, offsets, codes = _toy()
    cfg = TrainConfig.model_validate({"split": {"kind": "none"}})
    s = split_frames(labels, gold, offsets, cfg, codes)
    assert s.train_frames.sum() == 32 and not s.val_frames.any() and s.test_frames.sum() == 8
    assert selection_rule(cfg, s) == "last"


def test_bad_split_settings_are_input_errors_naming_the_field():
    labels, gold, offsets, codes = _toy()
    with pytest.raises(InputError, match="train.split.kind") as err:
        split_frames(labels, gold, offsets, TrainConfig.model_validate({"split": {"kind": "data"}}), None,
                     where="store.zarr")
    assert err.value.value == "data" and err.value.file == "store.zarr"
    no_gold = np.where(codes == SPLIT_CODES["valid"], -1, gold).astype(np.int16)
    s = split_frames(labels, no_gold, offsets, TrainConfig(), codes)
    assert selection_rule(TrainConfig(), s) == "crowd"  # auto falls back to the crowd criterion
    with pytest.raises(InputError, match="no gold") as err:
        selection_rule(TrainConfig(select="gold"), s, where="store.zarr")
    assert err.value.field == "train.select" and err.value.value == "gold"
    none = TrainConfig.model_validate({"split": {"kind": "none"}, "select": "crowd"})
    with pytest.raises(InputError, match="no validation"):
        selection_rule(none, split_frames(labels, gold, offsets, none, codes))


def test_min_epochs_default_is_past_the_warm_up():
    assert min_epochs(TrainConfig()) == 5  # 10% of 40 epochs, plus one
    assert min_epochs(TrainConfig.model_validate({"optim": {"schedule": "constant"}})) == 1
    assert min_epochs(TrainConfig.model_validate({"optim": {"min_epochs": 3}})) == 3


# ------------------------------------------------------------------------------ seeds, feeds
def _frames_root(root: Path) -> RootLayout:
    lengths = [60, 45, 80, 30, 70, 55]
    rng = np.random.default_rng(2)
    labels = rng.integers(-1, 3, size=(sum(lengths), 2))
    batch = make_batch([f"s{i}" for i in range(len(lengths))], lengths, ["a", "b"], labels, seed=3)
    layout = RootLayout(root)
    open_or_create(layout.dataset_uri("toy"), StoreConfig(chunk_frames=32), ["a", "b", "c"], None).append(
        batch, progress=False)
    return layout


def _toy_config(train: dict) -> PipelineConfig:
    base = {"threads": 1, "baselines": ["mv"], "encoder": {"temporal": {"context_frames": 5, "blocks": 2}},
            "loader": {"crop_frames": 16}, "optim": {"max_epochs": 3}, "checkpoint_every_s": 0}
    return PipelineConfig.model_validate({"name": "toy", "source": {"kind": "demo"}, "train": {**base, **train}})


@pytest.mark.slow
def test_frames_in_memory_equal_frames_read_chunk_by_chunk(tmp_path):
    memory = train_model(_toy_config({}), _frames_root(tmp_path / "a"))
    chunked = train_model(_toy_config({"loader": {"crop_frames": 16, "in_memory_mb": 0}}), _frames_root(tmp_path / "b"))
    assert memory.metrics == chunked.metrics and same_weights(memory, chunked)


@pytest.mark.slow
def test_seeds_train_one_model_each_on_one_split(tmp_path):
    layout = _frames_root(tmp_path)
    result = train_model(_toy_config({"seeds": [3, 1]}), layout)
    assert [s.seed for s in result.seeds] == [3, 1] and result.seed == 3
    assert result.model_dir == result.seeds[0].model_dir != result.seeds[1].model_dir
    one = train_model(_toy_config({"seed": 1}), layout)  # the same as seed 1 of the two: same run folder
    assert one.metrics == result.seeds[1].metrics and one.model_dir == result.seeds[1].model_dir
    stats = result.summary["model"]["val_loss"]
    values = [s.metrics.val_loss for s in result.seeds]
    assert stats.n == 2 and stats.mean == pytest.approx(np.mean(values))
    assert stats.sd == pytest.approx(np.std(values, ddof=1))
    assert result.seeds[0].metrics != result.seeds[1].metrics


TRAIN_SEEDS = """
import json, sys
from pathlib import Path
from configs.schema import PipelineConfig
from storage.layout import RootLayout
from tasks.train import train_model
config = PipelineConfig.model_validate(json.loads(sys.argv[1]))
train_model(config, RootLayout(Path(sys.argv[2])))
"""


def test_seeds_in_processes_equal_seeds_in_turn_and_a_kill_leaves_no_worker(tmp_path):
    """Seeds trained two processes at a time give the models of seeds trained one after another
    (metrics, histories, weights bit for bit); a SIGKILL of the command while its workers train
    leaves no worker behind, and a retry resumes and ends with the same models."""
    seeds = {"seeds": [3, 1], "optim": {"max_epochs": 4}}
    in_turn = train_model(_toy_config({**seeds, "seed_workers": 1}), _frames_root(tmp_path / "turn"))
    side = _toy_config({**seeds, "seed_workers": 2})
    parallel = train_model(side, _frames_root(tmp_path / "side"))

    killed = tmp_path / "killed"
    layout = _frames_root(killed)
    # the workers' command lines do not name the root: a variable that they inherit does
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "ANNOSTYLE_TEST_ROOT": str(killed)}
    proc = subprocess.Popen([sys.executable, "-c", TRAIN_SEEDS, json.dumps(side.model_dump(mode="json")),
                             str(killed)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not list(killed.glob("models/toy/*/checkpoint*")):
        time.sleep(0.005)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    workers = processes_of(killed) - {proc.pid}
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)
    assert workers, "the kill must land while the seed workers run"
    assert processes_of(killed) == set(), "a seed worker outlived its killed command"
    resumed = train_model(side, layout)

    for run in (parallel, resumed):
        assert [s.seed for s in run.seeds] == [3, 1]
        for a, b in zip(in_turn.seeds, run.seeds, strict=True):
            assert a.metrics == b.metrics
            assert json.loads(Path(a.history_path).read_text()) == json.loads(Path(b.history_path).read_text())
        assert same_weights(in_turn, run) and run.summary == in_turn.summary
    assert any(s.resumed_from_epoch for s in resumed.seeds), "the retry resumed a killed seed's checkpoint"
