"""Damage to every file of a dataset store is an error naming the file, never an answer.

A small real store (features, item names, a batch that changes rows in place so that
`history/1/*` exists) is copied once per case; each copy gets one damage (a chunk deleted, a
byte flipped, a chunk truncated, a manifest field or an array's zarr.json edited), and then
everything is read back through the store's API, at the latest and at the older version.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_batch

from configs.schema import StoreConfig
from errors import DamagedStore, InputError
from storage.dataset_store import DatasetStore, open_or_create
from storage.integrity import chunk_array, verify_array

ARRAYS = ["features", "labels", "gold", "offsets", "sequence_names", "item_names",
          "history/1/frames", "history/1/labels", "history/1/gold"]
REPO = Path(__file__).resolve().parents[1]


def _batch(names, lengths, annotators, labels, seed, items):
    batch = make_batch(names, lengths, annotators, labels, gold=[0] * sum(lengths), seed=seed)
    return dataclasses.replace(batch, item_names=items)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pristine") / "ds.zarr"
    store = open_or_create(str(path), StoreConfig(chunk_frames=4), ["a", "b", "c"], None)
    store.append(_batch(["s0", "s1"], [6, 5], ["A", "B"], [i % 3 for i in range(22)], 0,
                        [f"i{i}" for i in range(11)]))
    # the same sequences again with a new annotator C: rows changed in place -> history/1
    store.append(_batch(["s0", "s1"], [6, 5], ["C"], [1] * 11, 0, [f"i{i}" for i in range(11)]))
    return path


def read_everything(uri: Path) -> None:
    """Every read the pipeline makes, at the latest version and at the first one."""
    latest = DatasetStore.open(uri)
    for store in (latest, DatasetStore.open(uri, version=latest.batches[0]["version"])):
        store.read_labels(), store.read_gold(), store.offsets, store.sequence_names, store.item_names
        np.asarray(store.features[: store.n_frames])


def chunk_files(root: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        array = chunk_array(key) if path.is_file() else None
        if array is not None:
            out.setdefault(array, []).append(path)
    return out


def test_pristine_store_reads_and_every_array_has_checked_chunks(pristine):
    read_everything(pristine)
    files = chunk_files(pristine)
    assert sorted(files) == sorted(ARRAYS)
    store = DatasetStore.open(pristine)
    for name in ARRAYS:
        report = verify_array(store._array(name))
        assert report.damaged == [] and report.chunks == len(files[name]) > 0


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "deleted":
        path.unlink()
    elif how == "flipped":
        i = len(data) // 2
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x40]) + data[i + 1:])
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])


def _edit_manifest(path: Path, what: str) -> None:
    doc = json.loads((path / "zarr.json").read_text())
    batches = doc["attributes"]["manifest"]["batches"]
    if what == "n_frames":
        batches[-1]["totals"]["n_frames"] -= 1
    elif what == "annotator":
        doc["attributes"]["manifest"]["annotators"][0] = "Z"
    elif what == "version":
        batches[-1]["version"] = "f" * 16
    elif what == "batch hash":
        batches[0]["hash"] = "0" * 64
    elif what == "gone":
        (path / "zarr.json").unlink()
        return
    elif what == "not json":
        (path / "zarr.json").write_bytes(b"\xff\xfe{not json")
        return
    (path / "zarr.json").write_text(json.dumps(doc))


def _edit_array_meta(path: Path, name: str, what: str) -> None:
    file = path / name / "zarr.json"
    doc = json.loads(file.read_text())
    if what == "shape":
        doc["shape"][0] += 4
    elif what == "codecs":
        doc["codecs"] = [c for c in doc["codecs"] if c["name"] != "crc32c"]
    elif what == "gone":
        file.unlink()
        return
    file.write_text(json.dumps(doc))


def _expect_damage(copy: Path, file: Path) -> bool:
    try:
        read_everything(copy)
    except DamagedStore as err:
        assert err.file == str(file), (err.file, file)
        return True
    return False


def test_every_damaged_file_is_an_error_naming_it(pristine, tmp_path):
    cases: list[tuple[str, bool]] = []
    n = 0

    def fresh() -> Path:
        nonlocal n
        n += 1
        copy = tmp_path / f"c{n}" / "ds.zarr"
        shutil.copytree(pristine, copy)
        return copy

    for name in ARRAYS:
        rel = [p.relative_to(pristine) for p in chunk_files(pristine)[name]]
        for how in ("deleted", "flipped", "truncated"):
            for chunk in (rel[0], rel[-1]):
                copy = fresh()
                _damage(copy / chunk, how)
                cases.append((f"{name} {chunk} {how}", _expect_damage(copy, copy / chunk)))
        for what in ("shape", "codecs", "gone"):
            copy = fresh()
            _edit_array_meta(copy, name, what)
            cases.append((f"{name}/zarr.json {what}", _expect_damage(copy, copy / name / "zarr.json")))
    for what in ("n_frames", "annotator", "version", "batch hash", "gone", "not json"):
        copy = fresh()
        _edit_manifest(copy, what)
        cases.append((f"manifest {what}", _expect_damage(copy, copy / "zarr.json")))
    missed = [case for case, ok in cases if not ok]
    print(f"dataset store corruption cases detected {len(cases) - len(missed)} / {len(cases)}")
    assert not missed


def test_a_store_written_before_checksums_is_refused_with_a_way_out(pristine, tmp_path):
    copy = tmp_path / "old.zarr"
    shutil.copytree(pristine, copy)
    doc = json.loads((copy / "zarr.json").read_text())
    doc["attributes"]["format_version"] = 1
    del doc["attributes"]["digest"]
    (copy / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="before chunk checksums.*annostyle ingest") as err:
        DatasetStore.open(copy)
    assert not isinstance(err.value, DamagedStore) and err.value.field == "format_version"


def test_damage_under_a_new_batch_is_refused_before_anything_is_written(pristine, tmp_path):
    copy = tmp_path / "ds.zarr"
    shutil.copytree(pristine, copy)
    last = chunk_files(copy)["labels"][-1]
    _damage(last, "flipped")
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file() and p.name != ".write.lock"}
    store = DatasetStore.open(copy, mode="r+")
    with pytest.raises(DamagedStore) as err:
        store.append(make_batch(["s9"], [3], ["A"], [0, 1, 2], seed=3).__class__(
            **{**dataclasses.asdict(make_batch(["s9"], [3], ["A"], [0, 1, 2], seed=3)),
               "item_names": ["x0", "x1", "x2"]}))
    assert err.value.file == str(last)
    after = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file() and p.name != ".write.lock"}
    assert after == before


def test_many_annotators_are_matched_in_linear_time(tmp_path):
    n = 33_000
    names = [f"w{i}" for i in range(n)]
    labels = np.full((2, n), -1, np.int16)
    labels[0, ::7], labels[1, ::11] = 0, 1
    store = open_or_create(str(tmp_path / "wide.zarr"), StoreConfig(chunk_frames=4), ["a", "b", "c"], None)
    t0 = time.perf_counter()
    store.append(make_batch(["s0"], [2], names, labels.ravel(), features=False))
    store.append(make_batch(["s0"], [2], names[::-1] + ["new"], np.zeros((2, n + 1), np.int16).ravel() - 1,
                            features=False))
    seconds = time.perf_counter() - t0
    reopened = DatasetStore.open(store.uri)
    assert reopened.n_annotators == n + 1 and reopened.annotators[-1] == "new"
    np.testing.assert_array_equal(reopened.read_labels()[:, :n], labels)
    assert seconds < 20, seconds


CREATE_AND_DIE = """
import os, signal, sys
import storage.dataset_store as ds
from configs.schema import StoreConfig
def die(tmp, target):
    os.kill(os.getpid(), signal.SIGKILL)
ds._publish = die
ds.open_or_create(sys.argv[1], StoreConfig(chunk_frames=4), ["a", "b", "c"], None)
"""


def test_a_crash_while_creating_leaves_no_store_and_the_next_ingest_creates_it(tmp_path):
    uri = tmp_path / "datasets" / "ds.zarr"
    proc = subprocess.run([sys.executable, "-c", CREATE_AND_DIE, str(uri)], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert not uri.exists() and [p.name.endswith(".creating") for p in uri.parent.iterdir()] == [True]
    store = open_or_create(str(uri), StoreConfig(chunk_frames=4), ["a", "b", "c"], None)
    assert store.append(make_batch(["s0"], [3], ["A"], [0, 1, 2])).status == "appended"
    assert DatasetStore.open(uri).n_frames == 3


def test_a_store_half_created_by_the_old_two_write_creation_is_finished(tmp_path):
    import zarr

    uri = tmp_path / "ds.zarr"
    zarr.open_group(str(uri), mode="w-", zarr_format=3)  # the first of the old two writes, then a crash
    store = open_or_create(str(uri), StoreConfig(chunk_frames=4), ["a", "b", "c"], None)
    assert store.append(make_batch(["s0"], [3], ["A"], [0, 1, 2])).status == "appended"
    assert DatasetStore.open(uri).n_frames == 3


def test_a_store_whose_zarr_json_is_gone_is_not_recreated_over_its_data(pristine, tmp_path):
    copy = tmp_path / "ds.zarr"
    shutil.copytree(pristine, copy)
    (copy / "zarr.json").unlink()
    with pytest.raises(DamagedStore) as err:
        open_or_create(str(copy), StoreConfig(chunk_frames=4), ["a", "b", "c"], None)
    assert err.value.file == str(copy / "zarr.json") and (copy / "labels" / "zarr.json").exists()
