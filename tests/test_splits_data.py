"""The data's own split in the dataset store: written per frame, versioned, checked on append, and
read as all -1 from a store that never got one (configs/splits.py, storage/dataset_store.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import tree_digest

from configs.schema import StoreConfig
from configs.splits import SPLIT_CODES, UNASSIGNED, split_code
from errors import DamagedStore, InputError
from storage.batch import Batch
from storage.dataset_store import DatasetStore

TRAIN, VALID, TEST = SPLIT_CODES["train"], SPLIT_CODES["valid"], SPLIT_CODES["test"]


def item_batch(items, labels, gold=None, split=None, *, annotators=("a1", "a2"), source="b.csv"):
    n = len(items)
    return Batch(
        sequence_names=list(items), sequence_lengths=np.ones(n, np.int64), annotators=list(annotators),
        classes=["x", "y"], labels=np.asarray(labels, np.int16).reshape(n, len(annotators)),
        gold=None if gold is None else np.asarray(gold, np.int16),
        features=np.array([[int(i[1:]), 1.0] for i in items], np.float32),  # a function of the item
        item_names=list(items), split=None if split is None else np.asarray(split, np.int8),
        sources={"labels": source, "split": source},
    )


def store_at(tmp_path, name="ds.zarr", chunk=2):
    return DatasetStore.create(tmp_path / name, StoreConfig(chunk_frames=chunk))


def test_split_codes_and_values():
    assert SPLIT_CODES == {"train": 0, "valid": 1, "test": 2} and UNASSIGNED == -1
    assert [split_code(v) for v in ("train", " Validation", "VAL", "dev", "test", "", None, float("nan"))] == \
        [0, 1, 1, 1, 2, -1, -1, -1]
    assert split_code("holdout") is None


def test_split_is_stored_versioned_and_reread(tmp_path):
    store = store_at(tmp_path)
    first = item_batch(["i0", "i1", "i2", "i3", "i4"], [[0, 1], [1, -1], [0, 0], [-1, -1], [-1, -1]],
                       gold=[0, 1, 0, 1, 0], split=[TRAIN, TRAIN, VALID, TEST, VALID])
    v1 = store.append(first).version
    assert store.has_split
    assert store.read_split().tolist() == [0, 0, 1, 2, 1]
    assert store.read_split(1, 4).tolist() == [0, 1, 2]
    assert store.read_split().dtype == np.int8
    assert store.split_counts == {"train": 2, "valid": 2, "test": 1, "none": 0}
    # a second batch: new items, and a split for an existing item that had none
    second = item_batch(["i1", "i5", "i6"], [[-1, -1], [1, 1], [0, -1]], gold=None, split=[-1, TRAIN, -1])
    store.append(second)
    reopened = DatasetStore.open(tmp_path / "ds.zarr")
    assert reopened.read_split().tolist() == [0, 0, 1, 2, 1, 0, -1]
    assert reopened.split_counts == {"train": 3, "valid": 2, "test": 1, "none": 1}
    old = DatasetStore.open(tmp_path / "ds.zarr", version=v1)
    assert old.read_split().tolist() == [0, 0, 1, 2, 1]
    assert DatasetStore.verify(tmp_path / "ds.zarr").ok


def test_store_without_split_reads_all_unassigned_and_gains_one(tmp_path):
    store = store_at(tmp_path)
    v1 = store.append(item_batch(["i0", "i1", "i2"], [[0, 1], [1, -1], [0, 0]])).version
    assert not store.has_split and "split" not in store.group
    assert store.read_split().tolist() == [-1, -1, -1]
    # a later batch with a split: the array is created, the earlier frames read -1
    store.append(item_batch(["i3", "i4", "i5"], [[0, 1], [-1, -1], [-1, -1]], gold=[0, 1, 0],
                            split=[TRAIN, TEST, VALID]))
    store = DatasetStore.open(tmp_path / "ds.zarr")
    assert store.has_split
    assert store.read_split().tolist() == [-1, -1, -1, 0, 2, 1]
    assert not DatasetStore.open(tmp_path / "ds.zarr", version=v1).has_split
    assert DatasetStore.open(tmp_path / "ds.zarr", version=v1).read_split().tolist() == [-1, -1, -1]
    # a batch without a split on a store with one: its new frames read -1
    store.append(item_batch(["i6"], [[1, 1]]))
    assert store.read_split().tolist() == [-1, -1, -1, 0, 2, 1, -1]
    assert DatasetStore.verify(tmp_path / "ds.zarr").ok


def test_moving_an_item_to_another_split_needs_replace(tmp_path):
    store = store_at(tmp_path)
    store.append(item_batch(["i0", "i1"], [[0, 1], [1, -1]], gold=[0, 1], split=[TRAIN, VALID]))
    before = tree_digest(tmp_path / "ds.zarr")
    with pytest.raises(InputError) as err:
        store.append(item_batch(["i1"], [[-1, 1]], split=[TRAIN], source="move.csv"))
    assert err.value.file == "move.csv" and err.value.field == "split" and "already in split 'valid'" in str(err.value)
    assert tree_digest(tmp_path / "ds.zarr") == before
    moved = item_batch(["i1"], [[-1, 1]], split=[TRAIN])
    moved.replace = True
    store.append(moved)
    assert store.read_split().tolist() == [0, 0]


def test_test_items_with_crowd_labels_are_refused(tmp_path):
    with pytest.raises(InputError) as err:
        item_batch(["i0", "i1"], [[0, 1], [1, -1]], gold=[0, 1], split=[TRAIN, TEST], source="t.csv").validate()
    assert (err.value.file, err.value.field, err.value.value) == ("t.csv", "split", "test")
    assert "'i1'" in str(err.value)
    # a later batch that labels a stored test item
    store = store_at(tmp_path)
    store.append(item_batch(["i0", "i1"], [[0, 1], [-1, -1]], gold=[0, 1], split=[TRAIN, TEST]))
    before = tree_digest(tmp_path / "ds.zarr")
    with pytest.raises(InputError) as err:
        store.append(item_batch(["i1"], [[1, -1]], source="late.csv"))
    assert err.value.field == "split" and "test item" in str(err.value)
    assert tree_digest(tmp_path / "ds.zarr") == before


def test_unknown_split_codes_and_lengths_are_refused():
    with pytest.raises(InputError, match="unknown split code"):
        item_batch(["i0"], [[0, 1]], split=[7]).validate()
    batch = item_batch(["i0", "i1"], [[0, 1], [0, 1]], split=[0, 0])
    batch.split = np.zeros(3, np.int8)
    with pytest.raises(InputError, match="one split value per frame"):
        batch.validate()


def test_gold_only_items_need_a_split_once_the_data_has_splits(tmp_path):
    store = store_at(tmp_path)
    batch = item_batch(["i0", "i1", "i2"], [[0, 1], [-1, -1], [-1, -1]], gold=[0, 1, 0], split=[TRAIN, TEST, -1])
    batch.sources["gold"] = "gold.txt"
    with pytest.raises(InputError) as err:
        store.append(batch)
    assert (err.value.file, err.value.field) == ("gold.txt", "split") and "'i2'" in str(err.value)
    assert store.n_frames == 0


def test_split_is_part_of_the_content_hash():
    a = item_batch(["i0", "i1"], [[0, 1], [1, 0]], split=[TRAIN, VALID])
    b = item_batch(["i0", "i1"], [[0, 1], [1, 0]], split=[TRAIN, TRAIN])
    c = item_batch(["i0", "i1"], [[0, 1], [1, 0]])
    assert len({a.content_hash(), b.content_hash(), c.content_hash()}) == 3


def test_damaged_split_chunk_is_detected(tmp_path):
    store = store_at(tmp_path)
    store.append(item_batch(["i0", "i1", "i2"], [[0, 1], [1, -1], [-1, -1]], gold=[0, 1, 1],
                            split=[TRAIN, VALID, TEST]))
    chunk = tmp_path / "ds.zarr" / "split" / "c" / "0"
    data = bytearray(chunk.read_bytes())
    data[0] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(DamagedStore):
        DatasetStore.open(tmp_path / "ds.zarr").read_split()
    assert not DatasetStore.verify(tmp_path / "ds.zarr").ok


APPEND_WITH_SPLIT = """
import sys
from pathlib import Path

import numpy as np
sys.path.insert(0, {tests!r})
from conftest import big_batch
from configs.schema import StoreConfig
from storage.dataset_store import open_or_create
batch = big_batch("B")
batch.split = np.where(np.arange(batch.n_frames) < 50000, 1, 0).astype(np.int8)
store = open_or_create({uri!r}, StoreConfig(chunk_frames=16384), ["a", "b", "c"], None)
print(store.append(batch, progress=False).version)
"""


def split_batch_b():
    from conftest import big_batch

    batch = big_batch("B")
    batch.split = np.where(np.arange(batch.n_frames) < 50000, VALID, TRAIN).astype(np.int8)
    return batch


@pytest.mark.slow
def test_sigkill_while_a_split_array_is_created_rolls_back(tmp_path):
    """Batch A has no split; B creates the split array (valid on A's frames it relabels, train on
    its new frames). Killed once the array exists, the store reads as A (no split); a retry
    commits the same version, and the same split, as an uninterrupted run."""
    from conftest import big_batch, kill_when_written

    from storage.dataset_store import open_or_create

    config = StoreConfig(chunk_frames=16384)
    reference = open_or_create(str(tmp_path / "ref.zarr"), config, ["a", "b", "c"], None)
    reference.append(big_batch("A"), progress=False)
    version_b = reference.append(split_batch_b(), progress=False).version

    uri = tmp_path / "killed.zarr"
    store = open_or_create(str(uri), config, ["a", "b", "c"], None)
    version_a = store.append(big_batch("A"), progress=False).version
    labels_a = store.read_labels()
    kill_when_written(APPEND_WITH_SPLIT.format(tests=str(Path(__file__).parent), uri=str(uri)), uri,
                      "split/zarr.json")
    killed = DatasetStore.open(uri)
    assert killed.version == version_a and not killed.has_split
    assert (killed.read_split() == UNASSIGNED).all()
    assert np.array_equal(killed.read_labels(), labels_a)
    retried = open_or_create(str(uri), config, ["a", "b", "c"], None)
    assert retried.append(split_batch_b(), progress=False).version == version_b
    assert np.array_equal(retried.read_split(), DatasetStore.open(tmp_path / "ref.zarr").read_split())
    assert DatasetStore.open(uri, version=version_a).read_split().tolist() == [UNASSIGNED] * 100_000
    assert DatasetStore.verify(uri).ok
