"""Training's pure parts: encoders, heads, the chunked loader, aggregation, keys and configs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONFIGS, make_batch

from configs.schema import PipelineConfig, StoreConfig, load_config
from configs.train import EncoderConfig, HeadConfig, TrainConfig
from errors import InputError
from storage.dataset_store import open_or_create
from storage.layout import RootLayout
from tasks.aggregate import CrowdAggregate, aggregator_report, long_table
from tasks.conal import ConalHead
from tasks.encoders import MLPEncoder, TemporalConvEncoder, build_encoder, dilations
from tasks.heads import build_head
from tasks.loader import (
    ChunkCache,
    ChunkReader,
    cut_crops,
    gather_windows,
    iter_batches,
    keep_crops_with,
    read_range,
    scan_features,
    sequence_of_frames,
)
from tasks.model import load_model
from tasks.multi_annotator_head import MultiAnnotatorHead
from tasks.train import lr_at, seed_workers, split_sequences, train_key, train_model


# ------------------------------------------------------------------------------- encoders
@pytest.mark.parametrize(("context", "blocks"), [(15, 4), (10, 3), (2, 4), (0, 2), (31, 5)])
def test_dilations_cover_exactly_the_window(context, blocks):
    d = dilations(context, blocks)
    assert len(d) == blocks and sum(d) == context and min(d) >= 0


@pytest.mark.parametrize("velocity", [True, False])
def test_temporal_encoder_sees_exactly_its_window(velocity):
    torch.manual_seed(0)
    enc = TemporalConvEncoder(5, dim=8, context_frames=11, channels=16, blocks=3, velocity=velocity).eval()
    x = torch.randn(1, 40 + 10, 5)
    base = enc(x)
    assert base.shape == (1, 40, 8)
    # output frame t sees input rows t .. t + 10 (t - 5 .. t + 5 around the frame)
    changed = x.clone()
    changed[0, 30] += 10.0
    diff = (enc(changed) - base).abs().amax(dim=-1)[0]
    touched = torch.nonzero(diff > 1e-6).flatten().tolist()
    assert touched == list(range(20, 31))


def test_encoders_build_from_config_load_weights_and_freeze(tmp_path):
    cfg = EncoderConfig(kind="mlp", dim=6)
    enc = build_encoder(cfg, 4)
    assert isinstance(enc, MLPEncoder) and enc.context == 0 and enc(torch.zeros(3, 1, 4)).shape == (3, 1, 6)
    with torch.no_grad():
        enc.standardize.mean.fill_(2.0)
    torch.save(enc.state_dict(), tmp_path / "enc.pt")
    loaded = build_encoder(EncoderConfig(kind="mlp", dim=6, weights=tmp_path / "enc.pt", frozen=True), 4)
    assert torch.equal(loaded.standardize.mean, torch.full((4,), 2.0))
    assert not any(p.requires_grad for p in loaded.parameters())
    loaded.train()
    assert not loaded.training  # a frozen encoder never drops out
    temporal = build_encoder(EncoderConfig(kind="temporal"), 4)
    assert isinstance(temporal, TemporalConvEncoder) and temporal.context == 15


# ---------------------------------------------------------------------------------- heads
def test_multi_annotator_head_identity_init_masked_loss_and_new_annotators():
    torch.manual_seed(0)
    head = MultiAnnotatorHead(dim=8, n_annotators=3, n_classes=4, dropout=0.0)
    assert torch.equal(head.annotator_embeddings(), torch.eye(3))
    z = torch.randn(5, 8)
    logits = head.annotator_logits(z)
    assert logits.shape == (5, 3, 4)
    labels = torch.full((5, 3), -1)
    labels[0, 1], labels[3, 2] = 2, 0
    expected = torch.nn.functional.cross_entropy(torch.stack([logits[0, 1], logits[3, 2]]), torch.tensor([2, 0]))
    assert torch.allclose(head.loss(z, labels), expected, atol=1e-6)
    probs = torch.softmax(logits, -1).mean(1)
    assert torch.allclose(torch.exp(head.consensus_logits(z)), probs, atol=1e-6)
    head.add_annotators(2)
    emb = head.annotator_embeddings()
    assert emb.shape == (5, 3) and torch.equal(emb[:3], torch.eye(3))
    assert torch.allclose(emb[3], torch.full((3,), 1 / 3))
    assert torch.allclose(head.annotator_logits(z)[:, :3], logits, atol=1e-6)  # old annotators unchanged


def test_conal_mixture_regulariser_and_new_annotators():
    torch.manual_seed(0)
    head = ConalHead(dim=8, n_annotators=3, n_classes=4, lambda_=0.5)
    z = torch.randn(6, 8)
    logp = head.annotator_logits(z)
    assert torch.allclose(torch.exp(logp).sum(-1), torch.ones(6, 3), atol=1e-5)  # log-probabilities
    g, local = head.confusions()
    assert torch.allclose(local.sum(-1), torch.ones(3, 4)) and torch.allclose(g.sum(-1), torch.ones(4))
    labels = torch.full((6, 3), -1)
    labels[:, 0] = torch.tensor([0, 1, 2, 3, 0, 1])
    nll = torch.nn.functional.nll_loss(logp[:, 0], labels[:, 0])
    # identical L_r and G at initialisation: the regulariser is 0
    assert torch.allclose(head.loss(z, labels), nll, atol=1e-5)
    with torch.no_grad():
        head.annotator_confusion[1, 0, 1] += 3.0
    reg = torch.linalg.matrix_norm(head.confusions()[1] - head.confusions()[0]).sum()
    assert torch.allclose(head.loss(z, labels), nll - 0.5 * reg, atol=1e-5)
    head.add_annotators(1)
    assert torch.allclose(head.confusions()[1][3], head.confusions()[0])
    assert head.annotator_logits(z).shape == (6, 4, 4)


def test_build_head_from_config():
    ma = build_head(HeadConfig(), dim=8, n_annotators=5, n_classes=3)
    assert ma.kind == "multi_annotator" and ma.annotator_embeddings().shape == (5, 5)
    conal = build_head(HeadConfig.model_validate({"kind": "conal", "conal": {"lambda": 1e-3}}), 8, 5, 3)
    assert conal.kind == "conal" and conal.lambda_ == 1e-3
    assert HeadConfig().conal.lambda_ == 1e-5


# --------------------------------------------------------------------------------- loader
def test_crops_stay_inside_one_sequence_and_one_chunk():
    offsets = np.array([0, 7, 8, 30, 31, 50])
    keep = np.ones(50, bool)
    crops = cut_crops(offsets, chunk=16, crop=5, keep=keep, rng=np.random.default_rng(0))
    covered = np.zeros(50, int)
    for a, b, s in zip(crops.start, crops.stop, crops.seq, strict=True):
        assert offsets[s] <= a < b <= offsets[s + 1] and b - a <= 5
        assert a // 16 == (b - 1) // 16
        covered[a:b] += 1
    assert (covered == 1).all()


def test_windows_pad_by_repeating_the_sequence_edge():
    offsets = np.array([0, 4, 10])
    data = np.arange(10, dtype=np.float32)[:, None]
    crops = cut_crops(offsets, chunk=100, crop=3, keep=np.ones(10, bool))
    w = gather_windows(data, np.zeros(len(crops), np.int64), crops, offsets, crop=3, context=2)
    assert w.x.shape == (len(crops), 7, 1)
    assert w.x[0, :, 0].tolist() == [0, 0, 0, 1, 2, 3, 3]  # frames 0..2 of sequence 0, padded at 0
    assert w.frames[1].tolist() == [3, -1, -1]  # frame 3 is the sequence's last
    assert w.x[1, :, 0].tolist()[:5] == [1, 2, 3, 3, 3]  # never reaches into sequence 1
    assert w.x[2, :, 0].tolist() == [4, 4, 4, 5, 6, 7, 8]


@pytest.fixture
def small_store(tmp_path):
    """A store of 5 sequences in chunks of 16 frames, 3 features, 2 annotators."""
    lengths = [9, 20, 1, 30, 12]
    n = sum(lengths)
    rng = np.random.default_rng(3)
    labels = rng.integers(-1, 3, size=(n, 2))
    batch = make_batch([f"s{i}" for i in range(5)], lengths, ["a", "b"], labels, seed=1)
    store = open_or_create(str(tmp_path / "s.zarr"), StoreConfig(chunk_frames=16), ["a", "b", "c"], None)
    store.append(batch, progress=False)
    return store, batch


def test_epoch_reads_each_chunk_once_and_yields_every_crop_once(small_store):
    store, batch = small_store
    offsets = store.offsets
    scan = scan_features(store.features, offsets, context=3, stats_mask=np.ones(store.n_frames, bool))
    np.testing.assert_allclose(scan.mean, batch.features.mean(0), atol=1e-5)
    reader = ChunkReader(store.features, store.n_frames, scan)
    labelled = (store.read_labels() >= 0).any(1)
    crops = keep_crops_with(cut_crops(offsets, 16, 4, np.ones(store.n_frames, bool), np.random.default_rng(1)),
                            labelled)
    seen = []
    for b in iter_batches(reader, crops, offsets, crop=4, batch_crops=3, buffer=2, rng=np.random.default_rng(2)):
        assert b.x.shape[1:] == (4 + 6, 3)
        seen += b.frames[b.frames >= 0].tolist()
        # every window equals the one read directly with the same padding rule
        seq = sequence_of_frames(offsets)
        for row in range(len(b.frames)):
            f = b.frames[row][0]
            lo, hi = offsets[seq[f]], offsets[seq[f] + 1] - 1
            idx = np.clip(np.arange(f - 3, f + 4), lo, hi)
            np.testing.assert_array_equal(b.x[row, :7], batch.features[idx])
    assert sorted(seen) == sorted(np.concatenate([np.arange(a, b) for a, b in zip(crops.start, crops.stop, strict=True)]).tolist())
    assert reader.bytes_read == store.features.nbytes  # one read per chunk, no per-row reads


def test_read_range_in_pieces_decodes_each_chunk_once(small_store):
    store, batch = small_store
    whole = read_range(store, 25, 45, context=3, crop=8)
    assert whole.frames[whole.frames >= 0].tolist() == list(range(25, 45))
    cache = ChunkCache(store.features)
    pieces = [read_range(store, a, min(a + 10, store.n_frames), 3, 1, cache) for a in range(0, store.n_frames, 10)]
    assert cache.decoded == -(-store.n_frames // 16)  # sequential ranges: every chunk decoded once
    direct = read_range(store, 0, store.n_frames, 3, 1)  # crop 1: one window per frame
    np.testing.assert_array_equal(np.concatenate([p.x for p in pieces]), direct.x)
    np.testing.assert_array_equal(np.concatenate([p.frames for p in pieces])[:, 0], np.arange(store.n_frames))
    with pytest.raises(ValueError):
        read_range(store, 40, store.n_frames + 1, 3, 8)


def test_a_frozen_random_encoder_stays_as_initialised(small_store, tmp_path):
    store, _ = small_store
    root = tmp_path / "root"
    config = PipelineConfig.model_validate({
        "name": "toy", "source": {"kind": "demo"},
        "train": {"threads": 1, "baselines": [], "encoder": {"kind": "mlp", "frozen": True},
                  "optim": {"max_epochs": 2}}})
    moved = open_or_create(RootLayout(root).dataset_uri("toy"), StoreConfig(chunk_frames=16), ["a", "b", "c"], None)
    moved.append(make_batch([f"s{i}" for i in range(5)], [9, 20, 1, 30, 12], ["a", "b"],
                            store.read_labels(), seed=1), progress=False)
    summary = train_model(config, RootLayout(root))
    trained = load_model(Path(summary.model_dir)).net.encoder
    torch.manual_seed(0)
    fresh = build_encoder(EncoderConfig(kind="mlp"), 3)
    body = {k: v for k, v in trained.state_dict().items() if not k.startswith("standardize")}
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in body.items())
    assert summary.epochs == 2 and summary.encoder == "mlp"


# ----------------------------------------------------------------------------- aggregation
def test_aggregators_on_a_tiny_matrix():
    labels = np.array([[0, 0, 1], [1, 1, -1], [-1, -1, -1], [2, 2, 2]], np.int16)
    assert long_table(labels).shape == (8, 3)
    mv = CrowdAggregate("mv", 3).fit(labels)
    assert mv.labels_.tolist() == [0, 1, -1, 2]
    ds = CrowdAggregate("ds", 3).fit(labels)
    assert ds.labels_[2] == -1 and ds.probas_.shape == (4, 3) and np.allclose(ds.probas_[[0, 1, 3]].sum(1), 1)
    report = aggregator_report(labels, np.array([0, 1, 2, 2], np.int16), 3, ["x", "y", "z"])
    assert report["mv"].consensus_accuracy == 1.0 and report["mv"].n_gold == 3  # item 2 has no label
    assert report["mv"].agreement_per_annotator["z"] == 0.5


# --------------------------------------------------------------------- split, key, schedule
def test_validation_split_is_by_sequence_and_seeded():
    offsets = np.array([0, 10, 20, 30, 40, 50])
    labelled = np.ones(50, bool)
    labelled[40:] = False  # an unlabelled sequence never goes to validation
    val = split_sequences(offsets, labelled, 0.5, seed=0)
    assert val.sum() == 2 and not val[4]
    assert np.array_equal(val, split_sequences(offsets, labelled, 0.5, seed=0))


def test_train_key_follows_version_and_settings_that_change_results():
    cfg = TrainConfig()
    assert train_key("v1", cfg) == train_key("v1", TrainConfig(log_every_s=1))
    assert train_key("v1", cfg) != train_key("v2", cfg)
    assert train_key("v1", cfg) != train_key("v1", TrainConfig(seed=1))


def test_one_cycle_schedule():
    cfg = TrainConfig()
    values = [lr_at(p / 100, cfg) for p in range(101)]
    peak = int(np.argmax(values))
    assert abs(peak / 100 - cfg.optim.warmup) <= 0.01 and values[-1] < values[0] < values[peak]
    assert lr_at(0.5, TrainConfig.model_validate({"optim": {"schedule": "constant"}})) == cfg.optim.lr


# ------------------------------------------------------------------------------------ configs
def test_existing_configs_stay_valid_and_train_keys_are_checked(tmp_path):
    for path in CONFIGS.glob("*.yaml"):
        assert isinstance(load_config(path).train, TrainConfig)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsource: {kind: demo}\ntrain: {head: {kind: conal, conal: {lamda: 1}}}\n")
    with pytest.raises(InputError, match="train.head.conal.lamda"):
        load_config(bad)
    bad.write_text("name: x\nsource: {kind: demo}\ntrain: {encoder: {temporal: {context_frames: 30}}}\n")
    with pytest.raises(InputError, match="odd"):
        load_config(bad)
    bad.write_text("name: x\nsource: {kind: demo}\ntrain: {encoder: {weights: nowhere.pt}}\n")
    with pytest.raises(InputError, match="file not found"):
        load_config(bad)


def test_seed_workers_follow_the_cores_the_memory_and_the_device():
    cores = len(os.sched_getaffinity(0))
    one = TrainConfig.model_validate({"threads": 1})
    assert seed_workers(one, "cpu", 5, 0) == min(5, cores)
    assert seed_workers(one, "cuda", 5, 0) == 1  # the seeds would share the device
    assert seed_workers(one, "cpu", 1, 0) == 1
    assert seed_workers(TrainConfig(), "cpu", 5, 0) == 1  # torch's threads take every core already
    mib = 2 ** 20
    small = TrainConfig.model_validate({"threads": 1, "loader": {"in_memory_mb": 3}})
    assert seed_workers(small, "cpu", 5, 2 * mib) == 1  # two copies of 2 MiB do not fit in 3 MiB
    assert seed_workers(TrainConfig.model_validate({"seed_workers": 3}), "cpu", 2, 0) == 2
