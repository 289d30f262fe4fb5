"""Representation probes, piece by piece: NT-Xent, the views, the MI bound, the split, the targets;
then SimCLR on scikit-learn's digits against raw pixels, and a SimCLR run killed mid-way."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONFIGS, kill_when_written
from sklearn.datasets import load_digits
from test_train_digits import digits_store

from configs.probe import AugmentConfig, LinearProbeConfig
from configs.schema import PipelineConfig, StoreConfig, load_config
from configs.train import EncoderConfig
from errors import InputError
from storage.batch import Batch
from storage.dataset_store import open_or_create
from storage.layout import RootLayout
from tasks.augment import sequence_view, vector_view
from tasks.encoders import build_encoder
from tasks.loader import read_range
from tasks.probe import bootstrap_intervals, fit_probe, held_out_nll, probe_target
from tasks.representation import (
    embed_frames,
    frame_targets,
    pretrain_encoder,
    probe_all,
    probe_representations,
    probe_split,
)
from tasks.simclr import CHECKPOINT, nt_xent
from tasks.train import split_sequences


# ------------------------------------------------------------------------------------ NT-Xent
def nt_xent_by_hand(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """The SimCLR paper's loss written out view by view, in float64."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        others = [k for k in range(2 * n) if k != i]
        denom = sum(float(torch.exp(z[i] @ z[k] / t)) for k in others)
        total += -float(z[i] @ z[j] / t) + np.log(denom)
    return total / (2 * n)


@pytest.mark.parametrize("t", [0.1, 0.5, 2.0])
def test_nt_xent_equals_the_loss_written_out(t):
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    assert float(nt_xent(z1, z2, t)) == pytest.approx(nt_xent_by_hand(z1, z2, t), rel=1e-5)


def test_nt_xent_stays_finite_on_degenerate_inputs():
    g = torch.Generator().manual_seed(2)
    for z1, z2, t in [(torch.zeros(4, 8), torch.zeros(4, 8), 0.5),  # collapsed encoder
                      (1e30 * torch.randn(4, 8, generator=g), 1e30 * torch.randn(4, 8, generator=g), 0.5),
                      (torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g), 1e-4)]:  # tiny temperature
        z1 = z1.clone().requires_grad_(True)
        loss = nt_xent(z1, z2, t)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(z1.grad).all()
    same = torch.randn(4, 8, generator=g)
    # partners identical and far from the rest: the loss tends to 0 as the temperature falls
    assert float(nt_xent(torch.eye(4), torch.eye(4), 0.01)) < 1e-6
    assert float(nt_xent(same, same, 0.5)) < float(nt_xent(same, torch.randn(4, 8, generator=g), 0.5))


# -------------------------------------------------------------------------------------- views
def test_sequence_view_is_a_shifted_crop_of_the_window():
    context, shift = 5, 3
    x = torch.arange(2 * (context + shift) + 1, dtype=torch.float32)[None, :, None].repeat(16, 1, 4)
    plain = AugmentConfig(jitter=0, scaling=0, keypoint_dropout=0, time_shift=shift)
    view = sequence_view(x, context, torch.zeros(4), torch.ones(4), plain, torch.Generator().manual_seed(0))
    starts = view[:, 0, 0]
    assert view.shape == (16, 2 * context + 1, 4)
    assert set(starts.tolist()) <= set(range(2 * shift + 1)) and len(set(starts.tolist())) > 1
    assert torch.equal(view[:, :, 0], starts[:, None] + torch.arange(2 * context + 1))


def test_keypoint_dropout_hides_whole_keypoints_for_the_whole_window():
    x = torch.randn(64, 11, 6, generator=torch.Generator().manual_seed(0)) + 10
    hide = AugmentConfig(jitter=0, scaling=0, time_shift=0, keypoint_dropout=0.5, keypoint_size=2)
    view = sequence_view(x, 5, torch.zeros(6), torch.ones(6), hide, torch.Generator().manual_seed(1))
    hidden = view == 0
    assert hidden.any() and not hidden.all()
    assert torch.equal(hidden[:, :, 0::2], hidden[:, :, 1::2])  # x and y of a keypoint together
    assert torch.equal(hidden, hidden[:, :1].expand_as(hidden))  # the whole window
    assert torch.equal(view[~hidden], x[~hidden])


def test_feature_dropout_takes_values_from_the_same_feature_of_other_items():
    x = torch.randn(32, 1, 10, generator=torch.Generator().manual_seed(0))
    view = vector_view(x, torch.ones(10), AugmentConfig(noise=0, feature_dropout=0.5), torch.Generator().manual_seed(3))
    changed = view != x
    assert 0.2 < changed.float().mean() < 0.6
    for i, _, f in zip(*torch.nonzero(changed, as_tuple=True), strict=True):
        assert (x[:, 0, f] == view[i, 0, f]).any()  # a value this feature has somewhere in the batch


# --------------------------------------------------------------------------- MI bound, probes
def test_mi_bound_is_near_zero_for_a_shuffled_target_and_near_h_for_the_true_one():
    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    train = rng.permutation(len(y)) < 1200
    groups = np.arange(len(y))
    config = LinearProbeConfig()
    results = {}
    for name, target in (("true", y), ("shuffled", rng.permutation(y))):
        res = probe_target(x[train], target[train], groups[train], x[~train], target[~train], groups[~train], 10,
                           config, seed=0)
        results[name] = res
        span = res.interval.mutual_information
        assert span[0] <= res.mutual_information <= span[1]
    assert abs(results["shuffled"].mutual_information) < 0.05
    assert results["true"].mutual_information > 0.85 * results["true"].entropy
    assert results["true"].accuracy > 0.9 > 0.2 > results["shuffled"].accuracy


def test_probes_in_processes_equal_probes_one_by_one():
    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(1)
    train, groups = rng.permutation(len(y)) < 1200, np.arange(len(y))
    config = LinearProbeConfig(fractions=[0.1, 1.0], repeats=2, bootstrap=20)
    calls = [(x[train][:, cols], target[train], groups[train], x[~train][:, cols], target[~train], groups[~train],
              10, config, 0) for cols in (slice(None), slice(0, 32)) for target in (y, rng.permutation(y))]
    one_by_one = [res for res, _ in probe_all(calls, workers=1)]
    side_by_side = [res for res, _ in probe_all(calls, workers=2)]
    assert side_by_side == one_by_one
    assert len({r.accuracy for r in one_by_one}) == 4  # four different probes, in call order


def test_a_class_the_probe_never_saw_costs_a_finite_cross_entropy():
    z = np.random.default_rng(0).normal(size=(60, 3))
    y = np.repeat([0, 1], 30)
    probe = fit_probe(z, y, np.arange(60), LinearProbeConfig())
    nll = held_out_nll(probe, z[:5], np.array([2, 2, 0, 1, 2]), n_classes=3)
    assert np.isfinite(nll).all() and nll[0] > 5


def test_bootstrap_resamples_whole_groups():
    # two groups, each all right or all wrong: any resample's accuracy is 0, 1/2 or 1
    groups, y = np.repeat([0, 1], 50), np.zeros(100, np.int64)
    correct = np.repeat([True, False], 50)
    out = bootstrap_intervals(groups, y, np.ones(100), correct, 2, n_boot=500, seed=0)
    assert out.accuracy == [0.0, 1.0]


# ---------------------------------------------------------------------------- split, targets
def test_probe_split_never_mixes_sequences_and_holds_out_nothing_training_used(tmp_path):
    """12 sequences of 10 frames: 0-9 crowd-labelled, with gold-only frames in 3 and 4 (mixed);
    10 and 11 gold-only. Held out: training's validation sequences and the gold-only ones."""
    n_seq, length = 12, 10
    labels = np.full((n_seq * length, 2), -1, np.int16)
    labels[: 10 * length] = np.random.default_rng(0).integers(0, 2, size=(10 * length, 2))
    labels[3 * length: 3 * length + 4] = -1
    labels[4 * length + 6: 5 * length] = -1
    batch = Batch(sequence_names=[f"s{i:02d}" for i in range(n_seq)], sequence_lengths=np.full(n_seq, length),
                  annotators=["a0", "a1"], classes=["x", "y"], labels=labels,
                  gold=np.random.default_rng(1).integers(0, 2, n_seq * length).astype(np.int16),
                  features=np.zeros((n_seq * length, 2), np.float32), sources={"labels": "split test"})
    store = open_or_create(RootLayout(tmp_path).dataset_uri("split"), StoreConfig(), batch.classes, None)
    store.append(batch, progress=False)
    config = PipelineConfig.model_validate({"name": "split", "source": {"kind": "demo"}})
    held, split = probe_split(store.read_labels(), store.read_gold(), store.offsets, config.train)
    per_seq = held.reshape(n_seq, length)
    assert (per_seq.all(axis=1) | ~per_seq.any(axis=1)).all()  # a sequence is on one side only
    assert not (held & split.train_frames).any()  # no label training used is held out
    val = split_sequences(store.offsets, (labels >= 0).any(axis=1), 0.2, 0)
    expected = val.copy()
    expected[[10, 11]] = True  # gold-only sequences
    assert np.array_equal(per_seq[:, 0], expected)
    assert not per_seq[3, 0] or val[3]  # mixed sequences stay on the training side unless validation
    assert not per_seq[4, 0] or val[4]


def test_frame_targets():
    labels = np.array([[0, -1, -1], [1, 1, -1], [-1, -1, 2], [-1, -1, -1], [2, 2, 2], [0, -1, -1]], np.int16)
    gold = np.array([0, 1, 2, 1, -1, 0], np.int16)
    held = np.array([False, False, True, True, True, False])
    t = frame_targets(labels, gold, held, 3, ["gold", "consensus", "annotator", "shuffled"], seed=0)
    assert t["gold"][0].tolist() == gold.tolist()
    assert t["consensus"][0].tolist() == [0, 1, 2, -1, 2, 0]
    assert t["annotator"][0].tolist() == [0, -1, 2, -1, -1, 0] and t["annotator"][1] == 3
    shuffled = t["shuffled"][0]
    for side in (held, ~held):  # a permutation within each side of the split
        assert sorted(shuffled[side].tolist()) == sorted(t["consensus"][0][side].tolist())


def one_annotator_store(root: Path, leak: bool):
    """40 sequences of 50 frames, each labelled by one of two annotators. With `leak`, the annotator
    can be told from the features (annotator 1's recordings are offset); otherwise it cannot."""
    rng = np.random.default_rng(4)
    n_seq, length = 40, 50
    who = np.arange(n_seq) % 2
    behaviour = rng.integers(0, 2, size=n_seq * length)
    features = rng.normal(size=(n_seq * length, 4)).astype(np.float32)
    features[:, 0] += 3.0 * behaviour
    if leak:
        features[:, 1] += 3.0 * np.repeat(who, length)
    labels = np.full((n_seq * length, 2), -1, np.int16)
    labels[np.arange(n_seq * length), np.repeat(who, length)] = behaviour
    batch = Batch(sequence_names=[f"s{i:02d}" for i in range(n_seq)], sequence_lengths=np.full(n_seq, length),
                  annotators=["ann0", "ann1"], classes=["a", "b"], labels=labels, gold=None, features=features,
                  sources={"labels": "one-annotator test"})
    store = open_or_create(RootLayout(root).dataset_uri("solo"), StoreConfig(), batch.classes, None)
    store.append(batch, progress=False)
    return store


@pytest.mark.parametrize("leak", [True, False])
def test_annotator_identity_probe_finds_a_leak_and_only_a_leak(tmp_path, leak):
    one_annotator_store(tmp_path, leak)
    config = PipelineConfig.model_validate({
        "name": "solo", "source": {"kind": "demo"},
        "probe": {"encoders": ["raw"], "targets": ["annotator", "consensus", "gold"], "linear": {"bootstrap": 100}}})
    out = probe_representations(config, RootLayout(tmp_path))
    assert out.targets == ["annotator", "consensus"] and "gold" in out.skipped_targets
    annotator = out.results["raw"]["annotator"]
    assert out.results["raw"]["consensus"].accuracy > 0.8  # the behaviour is in feature 0 either way
    if leak:
        # (the interval is wide: 8 held-out sequences, each of one annotator, are 8 draws of Y)
        assert annotator.accuracy > 0.85 and annotator.mutual_information > 0.2
    else:  # nothing to find: no better than always naming the busier annotator, no information
        assert annotator.accuracy < annotator.chance + 0.05 and annotator.mutual_information < 0.02
    assert (Path(out.outputs) / "probe_table.csv").is_file()


# ----------------------------------------------------------------------------- SimCLR on digits
def digits_config(**simclr) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "name": "digits", "source": {"kind": "demo"},  # the source is not read: the store exists
        "train": {"threads": 1},
        "probe": {"encoders": ["raw", "random", "simclr"], "targets": ["gold", "shuffled"],
                  "simclr": {"epochs": 200, **simclr}}})


def test_simclr_beats_raw_pixels_with_a_tenth_of_the_labels(tmp_path):
    digits_store(tmp_path)
    config = digits_config()
    layout = RootLayout(tmp_path)
    simclr = pretrain_encoder(config, layout)
    assert simclr.final_loss < 0.8 * simclr.chance_loss
    out = probe_representations(config, layout, simclr=simclr)
    gold = {e: out.results[e]["gold"] for e in out.encoders}
    assert gold["simclr"].few_shot["0.1"] > gold["raw"].few_shot["0.1"]
    assert gold["simclr"].accuracy > gold["random"].accuracy
    for e in out.encoders:
        assert abs(out.results[e]["shuffled"].mutual_information) < 0.05
        assert out.mutual_information[e]["gold"] <= out.entropy["gold"]


PRETRAIN = """
import json, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_probe import digits_config
from storage.layout import RootLayout
from tasks.representation import pretrain_encoder
simclr = pretrain_encoder(digits_config(epochs=40), RootLayout(Path({root!r})))
print(json.dumps(simclr.model_dump(mode="json")["history"]))
"""


@pytest.mark.slow
def test_simclr_killed_mid_run_resumes_and_matches_an_uninterrupted_run(tmp_path):
    roots = {"killed": tmp_path / "killed", "reference": tmp_path / "reference"}
    for root in roots.values():
        digits_store(root)
    code = PRETRAIN.format(tests=str(Path(__file__).parent), root=str(roots["killed"]))
    ckpt = kill_when_written(code, roots["killed"], f"models/digits/simclr-*/{CHECKPOINT}")
    killed_at = int(torch.load(ckpt, weights_only=True)["epoch"])
    assert killed_at < 39

    resumed = pretrain_encoder(digits_config(epochs=40), RootLayout(roots["killed"]))
    reference = pretrain_encoder(digits_config(epochs=40), RootLayout(roots["reference"]))
    assert resumed.resumed_from_epoch == killed_at + 1 and reference.resumed_from_epoch is None
    assert [h.loss for h in resumed.history] == [h.loss for h in reference.history]
    weights = [torch.load(s.weights, weights_only=True) for s in (resumed, reference)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    again = pretrain_encoder(digits_config(epochs=40), RootLayout(roots["reference"]))  # finished: returned as it is
    history = [json.dumps(s.model_dump(mode="json")["history"]) for s in (again, reference)]
    assert history[0] == history[1]


def test_embedding_drawn_frames_equals_embedding_everything(tmp_path):
    """Reading only the ranges around drawn frames gives what one pass over the store gives."""
    store = one_annotator_store(tmp_path, leak=False)
    torch.manual_seed(0)
    encoders = {"temporal": build_encoder(EncoderConfig(kind="temporal", temporal={"context_frames": 7, "blocks": 2}),
                                          4).freeze(),
                "mlp": build_encoder(EncoderConfig(kind="mlp"), 4).freeze()}  # no context: the window is trimmed
    frames = np.sort(np.random.default_rng(0).choice(store.n_frames, 300, replace=False))
    got = embed_frames({"raw": None, **encoders}, store, frames, crop=16, device="cpu", batch_frames=200)
    for name, enc in encoders.items():
        whole = read_range(store, 0, store.n_frames, enc.context, crop=16)
        with torch.no_grad():
            z = enc(torch.from_numpy(whole.x)).reshape(-1, enc.dim).numpy()
        at = whole.frames.reshape(-1)
        order = np.argsort(np.where(at >= 0, at, store.n_frames))[: store.n_frames]
        assert np.allclose(got[name], z[order][frames], atol=1e-5), name
    assert np.array_equal(got["raw"], np.asarray(store.features[:])[frames])


@pytest.mark.parametrize(("probe", "key"), [({"encoders": ["vae"]}, "probe.encoders.0"),
                                            ({"simclr": {"temperature": 0}}, "probe.simclr.temperature"),
                                            ({"linear": {"fractions": [0.1, 2]}}, "probe.linear.fractions")])
def test_a_bad_probe_section_names_its_key(tmp_path, probe, key):
    with pytest.raises(InputError) as err:
        load_config(CONFIGS / "demo.yaml", {"probe": probe})
    assert err.value.field == key and "demo.yaml" in str(err.value)
