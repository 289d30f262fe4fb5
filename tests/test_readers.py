"""Readers on the shared real label sets, and on bad inputs written to tmp_path."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from configs.schema import PipelineConfig, load_config
from configs.sources import TracksSource
from errors import InputError
from storage.batch import Batch
from tasks.readers import read_source, read_tracks
from tasks.readers.common import encode_labels

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DREEM = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "dreem_sleep_scorers" / "scorers"


def majority_accuracy(batch: Batch) -> float:
    """Accuracy of the majority vote against gold, a tie counting 1/k when gold is among k winners."""
    assert batch.gold is not None
    counts = np.zeros((batch.n_frames, len(batch.classes)), dtype=np.int64)
    rows, cols = np.nonzero(batch.labels >= 0)
    np.add.at(counts, (rows, batch.labels[rows, cols]), 1)
    judged = (batch.gold >= 0) & (counts.sum(axis=1) > 0)
    winners = counts[judged] == counts[judged].max(axis=1, keepdims=True)
    hit = winners[np.arange(judged.sum()), batch.gold[judged]]
    return float((hit / winners.sum(axis=1)).mean())


def write_config(tmp_path: Path, source: dict[str, Any], **top: Any) -> PipelineConfig:
    """Write a config next to the test files and load it the way the pipeline does."""
    path = tmp_path / "test.yaml"
    path.write_text(yaml.safe_dump({"name": "test", "source": source, **top}))
    return load_config(path)


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n")
    return path


# --- the shared real sets ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "items", "annotators", "labels", "classes", "majority"),
    [
        ("bluebirds", 108, 39, 4212, 2, 0.759),
        ("rte", 800, 164, 8000, 2, 0.897),
        ("temp", 462, 76, 4620, 2, 0.936),
        ("wsd", 177, 34, 1770, 3, 0.994),
    ],
)
def test_item_sets(name: str, items: int, annotators: int, labels: int, classes: int, majority: float) -> None:
    batch = read_source(load_config(CONFIGS / f"{name}.yaml"))
    assert batch.n_frames == items
    assert len(batch.sequence_names) == items and batch.item_names == batch.sequence_names
    assert (batch.sequence_lengths == 1).all()
    assert len(batch.annotators) == annotators
    assert int((batch.labels >= 0).sum()) == labels
    assert len(batch.classes) == classes
    assert batch.gold is not None and int((batch.gold >= 0).sum()) == items
    assert batch.labels.dtype == np.int16 and batch.features is None
    assert majority_accuracy(batch) == pytest.approx(majority, abs=0.01)


def test_bluebirds_class_order_follows_config() -> None:
    batch = read_source(load_config(CONFIGS / "bluebirds.yaml"))
    assert batch.classes == ["false", "true"]
    assert set(batch.sources) == {"labels", "gold"}


def test_dreem_tracks() -> None:
    start = time.perf_counter()
    batch = read_source(load_config(CONFIGS / "dreem.yaml"))
    elapsed = time.perf_counter() - start
    assert len(batch.sequence_names) == 80
    assert batch.sequence_names == sorted(batch.sequence_names)
    assert batch.n_frames == 85_911
    assert batch.annotators == [f"scorer_{i}" for i in range(1, 6)]
    assert batch.classes == ["0", "1", "2", "3", "4"]
    assert int((batch.labels >= 0).sum()) == 412_919
    assert batch.gold is None and batch.item_names is None
    assert elapsed < 10, f"reading dreem took {elapsed:.1f}s"

    # scorer 1 vs scorer 2 raw agreement per record, averaged: the README's 0.795 / 0.738
    offsets = np.concatenate([[0], np.cumsum(batch.sequence_lengths)])
    healthy = {p.stem for p in (DREEM / "dodh" / "scorer_1").glob("*.json")}
    agreement: dict[bool, list[float]] = {True: [], False: []}
    for i, seq in enumerate(batch.sequence_names):
        track = batch.labels[offsets[i]:offsets[i + 1]]
        agreement[seq in healthy].append(float((track[:, 0] == track[:, 1]).mean()))
    assert len(agreement[True]) == 25 and len(agreement[False]) == 55
    assert np.mean(agreement[True]) == pytest.approx(0.795, abs=0.01)
    assert np.mean(agreement[False]) == pytest.approx(0.738, abs=0.01)


# --- tables with sequences and features --------------------------------------------------------


def test_table_with_sequences_and_gold_only_row(tmp_path: Path) -> None:
    write_csv(tmp_path / "frames.csv", """
seq,frame,worker,label,truth
a,0,w1,walk,walk
a,2,w1,run,
a,2,w2,run,
b,1,w2,walk,
b,0,,,run
""")
    config = write_config(tmp_path, {
        "kind": "table", "path": "frames.csv", "annotator_column": "worker",
        "sequence_column": "seq", "frame_column": "frame", "gold_column": "truth",
    })
    batch = read_source(config)
    assert batch.sequence_names == ["a", "b"]
    assert batch.sequence_lengths.tolist() == [3, 2]
    assert batch.annotators == ["w1", "w2"]
    assert batch.classes == ["run", "walk"]
    assert batch.item_names is None
    assert batch.labels.tolist() == [[1, -1], [-1, -1], [0, 0], [-1, -1], [-1, 1]]
    assert batch.gold is not None and batch.gold.tolist() == [1, -1, -1, 0, -1]


def test_table_gold_only_item_and_npy_features(tmp_path: Path) -> None:
    write_csv(tmp_path / "labels.csv", """
task,worker,label,gold
2,ann,1,1
0,ann,0,
0,bob,1,
4,,,0
""")
    features = np.arange(12, dtype=np.float64).reshape(6, 2)
    np.save(tmp_path / "features.npy", features)
    config = write_config(tmp_path, {
        "kind": "table", "path": "labels.csv", "gold_column": "gold", "features": "features.npy",
    })
    batch = read_source(config)
    assert batch.item_names == ["2", "0", "4", "1", "3", "5"]
    assert batch.sequence_names == batch.item_names
    assert batch.features is not None and batch.features.dtype == np.float32
    assert batch.features.tolist() == features[[2, 0, 4, 1, 3, 5]].tolist()
    assert batch.labels.tolist() == [[1, -1], [0, 1], [-1, -1], [-1, -1], [-1, -1], [-1, -1]]
    assert batch.gold is not None and batch.gold.tolist() == [1, -1, 0, -1, -1, -1]
    assert batch.sources["features"].endswith("features.npy")


def test_table_parquet_with_feature_table(tmp_path: Path) -> None:
    pd.DataFrame({"item": ["x", "y", "x"], "who": ["p", "p", "q"], "lab": [True, False, True]}).to_parquet(
        tmp_path / "labels.parquet")
    pd.DataFrame({"id": ["y", "x", "z"], "f1": [1.0, 2.0, 3.0], "f2": [4, 5, 6]}).to_parquet(
        tmp_path / "features.parquet")
    config = write_config(tmp_path, {
        "kind": "table", "path": "labels.parquet", "item_column": "item", "annotator_column": "who",
        "label_column": "lab", "features": "features.parquet", "features_item_column": "id",
    }, classes=[False, True])
    batch = read_source(config)
    assert batch.item_names == ["x", "y", "z"]
    assert batch.classes == ["false", "true"]
    assert batch.labels.tolist() == [[1, 1], [0, -1], [-1, -1]]
    assert batch.features is not None and batch.features.tolist() == [[2, 5], [1, 4], [3, 6]]


def test_replace_flag_is_passed(tmp_path: Path) -> None:
    write_csv(tmp_path / "t.tsv", "task\tworker\tlabel\n1\ta\tx")
    config = write_config(tmp_path, {"kind": "table", "path": "t.tsv"}, replace=True)
    assert read_source(config).replace is True


def test_encode_labels_normalises_and_sorts_numerically() -> None:
    codes, classes = encode_labels(["10", 2, 2.0, "True", None, float("nan"), " 10 "], None, "f", "label")
    assert classes == ["10", "2", "true"] and codes.tolist() == [0, 1, 1, 2, -1, -1, 0]
    codes, classes = encode_labels([10, 2, 2.0, None], None, "f", "label")
    assert classes == ["2", "10"] and codes.tolist() == [1, 0, 0, -1]
    codes, classes = encode_labels(["b", "a", -1], ["b", "a"], "f", "label", missing=-1)
    assert classes == ["b", "a"] and codes.tolist() == [0, 1, -1] and codes.dtype == np.int16


# --- bad input -----------------------------------------------------------------------------------


def test_misnamed_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "labels.csv", "task,worker,lbl\n1,a,0")
    config = write_config(tmp_path, {"kind": "table", "path": "labels.csv"})
    with pytest.raises(InputError) as err:
        read_source(config)
    message = str(err.value)
    assert str(path) in message and "label_column" in message and "'label'" in message
    assert "task, worker, lbl" in message


def test_missing_gold_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "labels.csv", "task,worker,label\n1,a,0")
    config = write_config(tmp_path, {"kind": "table", "path": "labels.csv", "gold_column": "truth"})
    with pytest.raises(InputError, match="gold_column") as err:
        read_source(config)
    assert str(path) in str(err.value) and "'truth'" in str(err.value)


def test_label_outside_configured_classes(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "labels.csv", "task,worker,label\n1,a,0\n2,a,1\n3,b,7")
    config = write_config(tmp_path, {"kind": "table", "path": "labels.csv"}, classes=[0, 1])
    with pytest.raises(InputError) as err:
        read_source(config)
    message = str(err.value)
    assert str(path) in message and "'label'" in message and "7" in message
    assert "outside the configured classes [0, 1]" in message


def test_unknown_annotator(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "labels.csv", "task,worker,label\n1,alice,0\n1,carol,1")
    config = write_config(tmp_path, {"kind": "table", "path": "labels.csv"}, annotators=["alice", "bob"])
    with pytest.raises(InputError) as err:
        read_source(config)
    message = str(err.value)
    assert str(path) in message and "'worker'" in message and "'carol'" in message


def test_empty_table(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "labels.csv", "task,worker,label")
    config = write_config(tmp_path, {"kind": "table", "path": "labels.csv"})
    with pytest.raises(InputError, match="empty") as err:
        read_source(config)
    assert str(path) in str(err.value)


def test_conflicting_duplicate_labels_and_gold(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "dup.csv", "task,worker,label,gold\n1,a,0,\n1,a,1,")
    config = write_config(tmp_path, {"kind": "table", "path": "dup.csv", "gold_column": "gold"})
    with pytest.raises(InputError, match="two different labels") as err:
        read_source(config)
    assert str(path) in str(err.value) and "'a'" in str(err.value)
    write_csv(path, "task,worker,label,gold\n1,a,0,0\n1,b,0,1\n1,c,0,0")
    with pytest.raises(InputError, match="conflicting gold") as err:
        read_source(config)
    assert "'gold'" in str(err.value) and "'1'" in str(err.value)


def test_nan_in_features(tmp_path: Path) -> None:
    write_csv(tmp_path / "labels.csv", "task,worker,label\n0,a,0\n1,a,1")
    features = tmp_path / "features.npy"
    np.save(features, np.array([[0.0, 1.0], [np.nan, 2.0]]))
    config = write_config(tmp_path, {"kind": "table", "path": "labels.csv", "features": "features.npy"})
    with pytest.raises(InputError, match="NaN") as err:
        read_source(config)
    assert str(features) in str(err.value) and "'features'" in str(err.value)


def test_feature_rows_do_not_match_items(tmp_path: Path) -> None:
    write_csv(tmp_path / "labels.csv", "task,worker,label\n0,a,0\n5,a,1")
    features = tmp_path / "features.npy"
    np.save(features, np.zeros((3, 2)))
    config = write_config(tmp_path, {"kind": "table", "path": "labels.csv", "features": "features.npy"})
    with pytest.raises(InputError, match="feature rows do not match the items") as err:
        read_source(config)
    assert str(features) in str(err.value) and "'5'" in str(err.value)

    table = write_csv(tmp_path / "features.csv", "task,f\n0,1.5\n1,2.5")
    config = write_config(tmp_path, {"kind": "table", "path": "labels.csv", "features": "features.csv"})
    with pytest.raises(InputError, match="feature rows do not match the items") as err:
        read_source(config)
    assert str(table) in str(err.value) and "'5'" in str(err.value)


def _tracks(root: Path, tracks: dict[str, dict[str, list[Any]]]) -> Path:
    for annotator, sequences in tracks.items():
        (root / annotator).mkdir(parents=True, exist_ok=True)
        for seq, labels in sequences.items():
            (root / annotator / f"{seq}.json").write_text(json.dumps(labels))
    return root


def test_tracks_union_and_missing_annotator(tmp_path: Path) -> None:
    root = _tracks(tmp_path / "night", {"b": {"s1": [0, 1, -1]}, "a": {"s1": [1, 1, 1], "s2": [2, 2]}})
    batch = read_tracks(TracksSource(kind="tracks", paths=[root]))
    batch.validate()
    assert batch.annotators == ["a", "b"] and batch.sequence_names == ["s1", "s2"]
    assert batch.classes == ["0", "1", "2"]
    assert batch.labels.tolist() == [[1, 0], [1, 1], [1, -1], [2, -1], [2, -1]]


def test_tracks_of_different_lengths(tmp_path: Path) -> None:
    root = _tracks(tmp_path / "night", {"a": {"s1": [0, 1, 1]}, "b": {"s1": [0, 1]}})
    config = write_config(tmp_path, {"kind": "tracks", "paths": ["night"]})
    with pytest.raises(InputError) as err:
        read_source(config)
    message = str(err.value)
    assert str(root / "b" / "s1.json") in message and "'s1'" in message
    assert "2 frames" in message and "has 3" in message


def test_tracks_duplicate_sequence_and_bad_label(tmp_path: Path) -> None:
    _tracks(tmp_path / "one", {"a": {"s1": [0]}})
    _tracks(tmp_path / "two", {"a": {"s1": [0]}})
    config = write_config(tmp_path, {"kind": "tracks", "paths": ["one", "two"]})
    with pytest.raises(InputError, match="same sequence name") as err:
        read_source(config)
    assert "s1" in str(err.value)
    bad = _tracks(tmp_path / "three", {"a": {"s1": [0, 1]}, "b": {"s1": [0, 9]}}) / "b" / "s1.json"
    config = write_config(tmp_path, {"kind": "tracks", "paths": ["three"]}, classes=[0, 1])
    with pytest.raises(InputError, match="outside the configured classes") as err:
        read_source(config)
    assert str(bad) in str(err.value) and "9" in str(err.value)


def test_mapping_not_a_mapping(tmp_path: Path) -> None:
    labels = tmp_path / "labels.yaml"
    labels.write_text("- 1\n- 2\n")
    config = write_config(tmp_path, {"kind": "mapping", "labels": "labels.yaml"})
    with pytest.raises(InputError, match="must hold a mapping") as err:
        read_source(config)
    assert str(labels) in str(err.value) and "'list'" in str(err.value)
    labels.write_text("alice: {1: true}\nbob: [true, false]\n")
    with pytest.raises(InputError, match="must be a mapping") as err:
        read_source(config)
    assert str(labels) in str(err.value) and "'bob'" in str(err.value)


def test_mapping_json_with_gold_only_item(tmp_path: Path) -> None:
    (tmp_path / "labels.json").write_text(json.dumps({"w2": {"1": "cat", "2": "dog"}, "w1": {"2": "dog"}}))
    (tmp_path / "gold.json").write_text(json.dumps({"2": "dog", "3": "cat"}))
    config = write_config(tmp_path, {"kind": "mapping", "labels": "labels.json", "gold": "gold.json"})
    batch = read_source(config)
    assert batch.item_names == ["1", "2", "3"] and batch.annotators == ["w1", "w2"]
    assert batch.labels.tolist() == [[-1, 0], [1, 1], [-1, -1]]
    assert batch.gold is not None and batch.gold.tolist() == [-1, 1, 0]
