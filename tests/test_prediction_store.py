"""The prediction store: layout and attributes, resume after a partial or killed write, extend,
the MABe npz export, and what float16 logits do to the distance matrix."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from conftest import PROJECT
from test_distances import ATTRS, fill_store, planted_logits, reference, relative_error

from configs.analyze import PredictConfig
from errors import InputError
from storage.layout import RootLayout
from storage.prediction_store import PredictionStore, auto_chunk_frames
from tasks.clustering import cut, tree
from tasks.distances import store_distances

ANNOTATORS = ["ann0", "ann1", "ann/2"]  # a name that is not a file name
CLASSES = ["other", "attack", "mount"]


def new_store(path: Path, n: int = 2500, chunk: int = 1000, **config) -> PredictionStore:
    return PredictionStore.create(path, n, ANNOTATORS, CLASSES, 4, 3, PredictConfig(chunk_frames=chunk, **config),
                                  {**ATTRS, "class_names": ["Other", "Attack", "Mount"], "note": "x"})


def rows(start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    f = np.arange(start, stop, dtype=np.float32)[:, None]
    logits = np.stack([np.sin(f / 50 + a) * 3 + np.arange(3) for a in range(3)], axis=1).astype(np.float32)
    return logits, np.repeat(f, 4, axis=1) / 1000, np.full((stop - start, 3), 1 / 3, np.float32)


def test_layout_attributes_and_summary(tmp_path):
    store = new_store(tmp_path / "p.zarr")
    assert RootLayout(tmp_path).prediction_uri("demo") == str(tmp_path / "predictions" / "demo.zarr")
    assert PredictionStore.exists(store.uri) and not PredictionStore.exists(tmp_path / "nothing.zarr")
    opened = PredictionStore.open(store.uri)
    assert opened.logits.shape == (2500, 3, 3) and opened.logits.dtype == np.float16
    assert opened.logits.chunks == (1000, 3, 3) and opened.embeddings.dtype == np.float32
    assert opened.consensus.shape == (2500, 3) and opened.annotator_embeddings().shape == (3, 3)
    attrs = opened.attrs
    assert attrs["format"] == "annostyle.predictions" and attrs["model_run_id"] == "run0"
    assert attrs["dataset_store"] == "memory://none" and attrs["dataset_version"] == "v0"
    assert attrs["annotators"] == ANNOTATORS and attrs["class_names"] == ["Other", "Attack", "Mount"]
    assert attrs["offsets_source"] == "memory://none#offsets@v0" and attrs["extra"] == {"note": "x"}
    assert attrs["segments"] == [[0, 2500]] and attrs["config"]["dtype"] == "float16"
    assert not opened.complete and opened.missing_ranges() == [(0, 2500)]
    assert opened.pending_chunks() == [(0, 1000), (1000, 2000), (2000, 2500)]
    with pytest.raises(FileExistsError):
        new_store(tmp_path / "p.zarr")
    with pytest.raises(ValueError, match="model_run_id"):
        PredictionStore.create(tmp_path / "q.zarr", 10, ANNOTATORS, CLASSES, 4, 3, PredictConfig(),
                               {"dataset_store": "x", "dataset_version": "v"})
    with pytest.raises(InputError, match="no prediction store"):
        PredictionStore.open(tmp_path / "nothing.zarr")
    assert auto_chunk_frames(6, 4, "float16") == 131072 and auto_chunk_frames(200, 50, "float32") == 1024


def test_resume_after_a_partial_write_and_chunk_rules(tmp_path):
    store = new_store(tmp_path / "p.zarr")
    store.write_chunk(0, *rows(0, 1000))
    store.write_chunk(2000, *rows(2000, 2300))  # a chunk written in part
    reopened = PredictionStore.open(store.uri, mode="r+")
    assert reopened.missing_ranges() == [(1000, 2000), (2300, 2500)]
    assert reopened.pending_chunks() == [(1000, 2000), (2300, 2500)]
    with pytest.raises(ValueError, match="gap"):
        reopened.write_chunk(1500, *rows(1500, 2000))
    with pytest.raises(ValueError, match="shape"):
        reopened.write_chunk(1000, rows(1000, 2000)[0][:, :2], *rows(1000, 2000)[1:])
    bad = rows(1000, 2000)
    bad[0][5, 1, 1] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        reopened.write_chunk(1000, *bad)
    for start, stop in reopened.pending_chunks():
        reopened.write_chunk(start, *rows(start, stop))
    assert reopened.complete and reopened.missing_ranges() == []
    assert np.array_equal(reopened.logits[:], rows(0, 2500)[0].astype(np.float16))
    summary = reopened.summary()
    assert summary["shape"] == [2500, 3, 3] and summary["dtype"] == "float16" and summary["complete"]
    assert summary["bytes"] > 0 and summary["compression_ratio"] > 1


KILL_WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from storage.prediction_store import PredictionStore
    store = PredictionStore.open(sys.argv[1], mode="r+")
    for start, stop in store.pending_chunks():
        n = stop - start
        f = np.arange(start, stop, dtype=np.float32)[:, None, None]
        store.write_chunk(start, np.broadcast_to(f % 7, (n, 3, 3)).copy(), np.zeros((n, 4), np.float32),
                          np.zeros((n, 3), np.float32))
        print(stop, flush=True)
        time.sleep(0.3)
""")


def test_a_killed_export_resumes_from_the_last_finished_chunk(tmp_path):
    store = new_store(tmp_path / "p.zarr", n=10_000, chunk=1000)
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    proc = subprocess.Popen([sys.executable, "-c", KILL_WRITER, store.uri], stdout=subprocess.PIPE, text=True,
                            env=env, cwd=PROJECT)
    done = [int(proc.stdout.readline()) for _ in range(3)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reopened = PredictionStore.open(store.uri, mode="r+")
    missing = reopened.missing_ranges()
    assert len(missing) == 1 and missing[0][1] == 10_000
    assert done[-1] <= missing[0][0] <= done[-1] + 1000  # at most the chunk being written is lost
    written = reopened.logits[: missing[0][0]]
    assert np.array_equal(written[:, 0, 0], (np.arange(missing[0][0]) % 7).astype(np.float16))
    proc = subprocess.run([sys.executable, "-c", KILL_WRITER, store.uri], env=env, cwd=PROJECT,
                          capture_output=True, text=True, check=True)
    assert proc.stdout.split()[0] == str(missing[0][0] + 1000)  # resumed, did not start over
    assert PredictionStore.open(store.uri).complete


def test_extend_adds_a_segment_and_continues_a_partial_chunk(tmp_path):
    store = new_store(tmp_path / "p.zarr", n=1500)
    for start, stop in store.pending_chunks():
        store.write_chunk(start, *rows(start, stop))
    assert store.extend(800, dataset_version="v1") == (1500, 2300)
    reopened = PredictionStore.open(store.uri, mode="r+")
    assert reopened.n_frames == 2300 and reopened.segments == [(0, 1500), (1500, 2300)]
    assert reopened.dataset_version == "v1" and reopened.logits.shape == (2300, 3, 3)
    assert reopened.missing_ranges() == [(1500, 2300)]
    assert reopened.pending_chunks() == [(1500, 2000), (2000, 2300)]
    reopened.write_chunk(1500, *rows(1500, 2300))  # one call over two chunks
    assert reopened.complete
    assert np.array_equal(reopened.logits[:], rows(0, 2300)[0].astype(np.float16))


def test_resume_or_create_keeps_a_matching_store_extends_it_and_replaces_another(tmp_path):
    uri = tmp_path / "p.zarr"
    config = PredictConfig(chunk_frames=1000)
    store = PredictionStore.resume_or_create(uri, 2500, ANNOTATORS, CLASSES, 4, 3, config, ATTRS)
    store.write_chunk(0, *rows(0, 1000))
    same = PredictionStore.resume_or_create(uri, 2500, ANNOTATORS, CLASSES, 4, 3, config, ATTRS)
    assert same.missing_ranges() == [(1000, 2500)]
    for start, stop in same.pending_chunks():
        same.write_chunk(start, *rows(start, stop))
    # a new batch, the same model: only the new frames are left to predict
    grown = PredictionStore.resume_or_create(uri, 3100, ANNOTATORS, CLASSES, 4, 3, config,
                                             {**ATTRS, "dataset_version": "v1"})
    assert grown.missing_ranges() == [(2500, 3100)] and grown.segments == [(0, 2500), (2500, 3100)]
    assert grown.dataset_version == "v1" and grown.attrs["offsets_source"].endswith("@v1")
    relabelled = PredictionStore.resume_or_create(uri, 3100, ANNOTATORS, CLASSES, 4, 3, config,
                                                  {**ATTRS, "dataset_version": "v2"})
    assert relabelled.dataset_version == "v2" and relabelled.missing_ranges() == [(2500, 3100)]
    other = PredictionStore.resume_or_create(uri, 3100, ANNOTATORS, CLASSES, 4, 3, config,
                                             {**ATTRS, "model_run_id": "run1"})
    assert other.missing_ranges() == [(0, 3100)] and other.model_run_id == "run1"


def test_npz_export_round_trip(tmp_path):
    store = new_store(tmp_path / "p.zarr")
    for start, stop in store.pending_chunks():
        store.write_chunk(start, *rows(start, stop))
    offsets = np.array([0, 700, 1900, 2100, 2500])
    names = ["seq a", "seq/b", "c", "d"]
    folder = tmp_path / "npz"
    report = store.export_npz(folder, offsets, names)
    assert report.sequences == 4 and report.files == 12
    index = json.loads((folder / "index.json").read_text())
    assert index["annotators"] == ANNOTATORS and [s["name"] for s in index["sequences"]] == names
    mapping: dict = {}
    store.export_npz(mapping, offsets, names)
    stored = store.logits[:].astype(np.float32)
    for i, name in enumerate(names):
        for a, annotator in enumerate(ANNOTATORS):
            payload = (folder / quote(name, safe="") / f"{quote(annotator, safe='')}.npz").read_bytes()
            assert payload == mapping[name][annotator]
            arr = np.load(io.BytesIO(payload))["arr_0"]
            assert arr.dtype == np.float32 and np.array_equal(arr, stored[offsets[i]: offsets[i + 1], a])
    with pytest.raises(ValueError):
        store.export_npz({}, offsets[:-1], names)
    empty = new_store(tmp_path / "e.zarr")
    with pytest.raises(InputError, match="incomplete"):
        empty.export_npz({}, offsets, names)


def test_float16_logits_change_the_distance_matrix_by_little(tmp_path, capsys):
    groups = [0, 0, 1, 1, 2, 2, 0, 1]
    logits = planted_logits(40_000, groups, seed=5)
    t0 = time.perf_counter()
    d32 = store_distances(fill_store(tmp_path / "f32.zarr", logits, groups, 8192, "float32")).matrix
    d16 = store_distances(fill_store(tmp_path / "f16.zarr", logits, groups, 8192, "float16")).matrix
    exact = reference(logits, "euclidean")  # float64 from the float32 logits
    err16, err32 = relative_error(d16, exact), relative_error(d32, exact)
    sizes = {d: PredictionStore.open(tmp_path / f"f{d}.zarr").summary()["logits_bytes"] for d in ("16", "32")}
    with capsys.disabled():
        print(f"\nfloat16 vs float64 logits: max relative distance error {err16:.2e} (float32: {err32:.2e}); "
              f"logits bytes float16 {sizes['16']:,} vs float32 {sizes['32']:,} ({time.perf_counter() - t0:.1f} s)")
    assert err32 <= 1e-6 and err16 <= 1e-3
    for k in (2, 3, 4):
        assert np.array_equal(cut(tree(d16), k), cut(tree(d32), k))
    assert sizes["16"] < 0.6 * sizes["32"]
