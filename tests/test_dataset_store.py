"""The dataset store: versions, appends, conflicts, history and bad batches, on real Zarr stores."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_batch, tree_digest

from configs.schema import StoreConfig
from errors import InputError
from storage.dataset_store import EMPTY_VERSION, DatasetStore, open_or_create


@pytest.fixture
def store(tmp_path):
    return open_or_create(str(tmp_path / "ds.zarr"), StoreConfig(chunk_frames=4), ["a", "b", "c"], None)


def first_batch():
    # two sequences (3 and 2 frames), annotators A and B
    return make_batch(["s0", "s1"], [3, 2], ["A", "B"], [0, 1, 1, -1, 2, 2, 0, 0, -1, 1], gold=[0, 1, 2, 0, 1])


def test_append_counts_and_reads_back(store):
    result = store.append(first_batch())
    assert result.status == "appended" and result.new_frames == 5 and result.labels_added == 8
    assert store.version != EMPTY_VERSION
    reopened = DatasetStore.open(store.uri)
    assert reopened.summary()["n_labels"] == 8
    assert (reopened.n_frames, reopened.n_sequences, reopened.n_annotators) == (5, 2, 2)
    np.testing.assert_array_equal(reopened.read_labels(), first_batch().labels)
    np.testing.assert_array_equal(reopened.read_gold(), [0, 1, 2, 0, 1])
    np.testing.assert_array_equal(reopened.offsets, [0, 3, 5])
    assert reopened.sequence_names.tolist() == ["s0", "s1"]
    np.testing.assert_allclose(reopened.features[:], first_batch().features)


def test_identical_batch_is_unchanged_and_touches_nothing(store, tmp_path):
    store.append(first_batch())
    before = tree_digest(tmp_path / "ds.zarr")
    again = store.append(first_batch())
    assert again.status == "unchanged" and again.version == store.version
    assert tree_digest(tmp_path / "ds.zarr") == before


def test_version_is_a_hash_of_the_committed_batches(tmp_path):
    versions = []
    for name in ("x", "y"):
        s = open_or_create(str(tmp_path / f"{name}.zarr"), StoreConfig(chunk_frames=4), ["a", "b", "c"], None)
        s.append(first_batch())
        s.append(make_batch(["s2"], [2], ["A", "C"], [1, 1, 2, -1], gold=[1, 2], seed=1))
        versions.append([b["version"] for b in s.manifest["batches"]])
    assert versions[0] == versions[1]
    other = open_or_create(str(tmp_path / "z.zarr"), StoreConfig(chunk_frames=4), ["a", "b", "c"], None)
    other.append(make_batch(["s2"], [2], ["A", "C"], [1, 1, 2, -1], gold=[1, 2], seed=1))
    assert other.version not in versions[0]


def test_new_annotator_labels_existing_frames_and_old_version_still_reads(store):
    v1 = store.append(first_batch()).version
    extra = make_batch(["s0"], [3], ["C"], [2, -1, 0], features=False)
    extra.features = first_batch().features[:3]
    result = store.append(extra)
    assert result.touched_frames == 3 and result.new_frames == 0 and result.labels_added == 2
    assert result.new_annotators == ["C"]
    latest = DatasetStore.open(store.uri)
    assert latest.n_annotators == 3 and latest.n_labels == 10
    np.testing.assert_array_equal(latest.read_labels(0, 3)[:, 2], [2, -1, 0])
    old = DatasetStore.open(store.uri, version=v1)
    assert old.n_annotators == 2 and old.n_labels == 8
    np.testing.assert_array_equal(old.read_labels(), first_batch().labels)


def test_contradicting_label_is_an_error_unless_replace(store, tmp_path):
    store.append(first_batch())
    clash = make_batch(["s0"], [3], ["A"], [1, 1, 2], features=False, source="clash.csv")
    clash.features = first_batch().features[:3]
    before = tree_digest(tmp_path / "ds.zarr")
    with pytest.raises(InputError, match=r"clash\.csv.*'label'.*annotator 'A' already labelled sequence 's0' frame 0"):
        store.append(clash)
    assert tree_digest(tmp_path / "ds.zarr") == before
    clash.replace = True
    result = store.append(clash)
    assert result.labels_replaced == 1
    np.testing.assert_array_equal(DatasetStore.open(store.uri).read_labels(0, 3)[:, 0], [1, 1, 2])


@pytest.mark.parametrize("bad, message", [
    (lambda: make_batch(["s0"], [4], ["A"], [0, 0, 0, 0]), "holds this sequence with 3 frames"),
    (lambda: make_batch(["s9"], [2], ["A"], [0, 0], features=False), "holds features"),
    (lambda: make_batch(["s0"], [3], ["A"], [0, 1, 2], seed=7), "features of frames the store holds already differ"),
])
def test_batches_that_do_not_fit_the_store_are_refused(store, tmp_path, bad, message):
    store.append(first_batch())
    before = tree_digest(tmp_path / "ds.zarr")
    with pytest.raises(InputError, match=message):
        store.append(bad())
    assert tree_digest(tmp_path / "ds.zarr") == before


def test_new_classes_are_appended_and_recorded(store):
    store.append(first_batch())
    store.append(make_batch(["s5"], [1], ["A"], [0], classes=("d",), seed=3))
    s = DatasetStore.open(store.uri)
    assert s.classes == ["a", "b", "c", "d"] and s.read_labels()[-1, 0] == 3


def test_unknown_version_names_the_known_ones(store):
    store.append(first_batch())
    with pytest.raises(InputError, match="no such version"):
        DatasetStore.open(store.uri, version="deadbeef")
