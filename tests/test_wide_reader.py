"""The wide label-matrix reader (`source.kind: wide`) and the long table's gold file and split
column: LabelMe's real files from ../shared for the positive path, small files in tmp_path for
the other layouts and for bad split input (through the real command line: exit 2, the file, the
field and the value named, the store untouched)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import CONFIGS, SHARED, check_message, tree_digest

from configs.schema import PipelineConfig, load_config
from configs.splits import SPLIT_CODES
from errors import InputError
from flows.cli import main
from storage.dataset_store import DatasetStore
from storage.layout import RootLayout
from tasks.readers import read_source

LABELME = SHARED / "labelme_amt"
TRAIN, VALID, TEST = SPLIT_CODES["train"], SPLIT_CODES["valid"], SPLIT_CODES["test"]


def write_config(folder: Path, source: dict[str, Any], **top: Any) -> Path:
    path = folder / "test.yaml"
    path.write_text(yaml.safe_dump({"name": "toy", "source": source, **top}, sort_keys=False))
    return path


def load(folder: Path, source: dict[str, Any], **top: Any) -> PipelineConfig:
    return load_config(write_config(folder, source, **top))


def write(folder: Path, name: str, text: str) -> str:
    (folder / name).write_text(text)
    return name


def npy(folder: Path, name: str, rows: int, width: int = 3, seed: int = 0) -> str:
    np.save(folder / name, np.random.default_rng(seed).normal(size=(rows, width)).astype(np.float32))
    return name


# --- LabelMe, the real files --------------------------------------------------------------------


def test_labelme_reads_as_published():
    batch = read_source(load_config(CONFIGS / "labelme.yaml"))
    answers = np.loadtxt(LABELME / "answers.txt", dtype=np.int64)
    assert answers.shape == (1000, 59)
    gold = [np.loadtxt(LABELME / f"LabelMe_Z_{s}.txt", dtype=np.int64) for s in ("train", "valid", "test")]
    feats = [np.load(LABELME / f"LabelMe_VGG_avg_{s}.npy") for s in ("train", "valid", "test")]
    assert batch.n_frames == 2688 and len(batch.annotators) == 59
    assert batch.classes == [str(c) for c in range(8)]
    assert np.array_equal(batch.labels[:1000], answers)  # codes equal the file's values (classes 0-7)
    assert (batch.labels[1000:] == -1).all()  # validation and test images: no crowd label
    assert int((batch.labels >= 0).sum()) == 2547
    per_item = (batch.labels[:1000] >= 0).sum(axis=1)
    assert per_item.min() == 1 and per_item.max() == 3
    assert np.array_equal(batch.gold, np.concatenate(gold))
    assert batch.features is not None and batch.features.shape == (2688, 512)
    assert np.array_equal(batch.features, np.concatenate(feats))
    assert batch.split is not None and Counter(batch.split.tolist()) == {TRAIN: 1000, VALID: 500, TEST: 1188}
    assert batch.item_names[:2] == ["train/0", "train/1"] and batch.item_names[-1] == "test/1187"
    # one annotator label is right 74.0% of the time (the dataset's README)
    rows, cols = np.nonzero(batch.labels >= 0)
    assert float((batch.labels[rows, cols] == batch.gold[rows]).mean()) == pytest.approx(0.740, abs=0.0005)


def test_labelme_ingests_with_its_split(prefect_harness, tmp_path, capsys):
    root = tmp_path / "root"
    assert main(["ingest", str(CONFIGS / "labelme.yaml"), "--root", str(root), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["split_counts"] == {"train": 1000, "valid": 500, "test": 1188, "none": 0}
    store = DatasetStore.open(RootLayout(root).dataset_uri("labelme"))
    assert store.has_split and store.split_counts == {"train": 1000, "valid": 500, "test": 1188, "none": 0}
    split = store.read_split()
    assert split.dtype == np.int8 and split[:1000].tolist() == [TRAIN] * 1000
    labels = store.read_labels()
    assert not (labels[split == TEST] >= 0).any()
    assert store.class_names[:2] == ["highway", "insidecity"]
    assert DatasetStore.verify(store.uri).ok


# --- other layouts ------------------------------------------------------------------------------


def test_cleanlab_csv_with_header_and_columns(tmp_path):
    """cleanlab's labels_multiannotator as CSV: annotator names in the header, empty = missing,
    with the item, gold and split columns in the same matrix."""
    write(tmp_path, "m.csv", "item,split,gold,ann_a,ann_b,ann_c\n"
                             "x1,train,0,0,,1\nx2,train,1,1,1,\nx3,valid,1,,0,1\nx4,test,0,,,\nx5,,,0,0,0\n")
    batch = read_source(load(tmp_path, {"kind": "wide", "labels": "m.csv", "features": npy(tmp_path, "f.npy", 5),
                                        "header": True, "item_column": "item", "gold_column": "gold",
                                        "split_column": "split"}))
    assert batch.annotators == ["ann_a", "ann_b", "ann_c"]
    assert batch.item_names == ["x1", "x2", "x3", "x4", "x5"]
    assert batch.labels.tolist() == [[0, -1, 1], [1, 1, -1], [-1, 0, 1], [-1, -1, -1], [0, 0, 0]]
    assert batch.gold is not None and batch.gold.tolist() == [0, 1, 1, 0, -1]
    assert batch.split is not None and batch.split.tolist() == [TRAIN, TRAIN, VALID, TEST, -1]


def test_pylearningcrowds_layout_one_part_without_split(tmp_path):
    """Whitespace, no header, -1 missing, a .npy gold: no split given, so `split` stays None."""
    write(tmp_path, "answers.txt", "-1 2 0\n1 -1 -1\n2 2 2\n")
    np.save(tmp_path / "gold.npy", np.array([0, 1, 2]))
    batch = read_source(load(tmp_path, {"kind": "wide", "labels": "answers.txt", "gold": "gold.npy"}))
    assert batch.annotators == ["0", "1", "2"] and batch.item_names == ["0", "1", "2"]
    assert batch.labels.tolist() == [[-1, 2, 0], [1, -1, -1], [2, 2, 2]]
    assert batch.gold is not None and batch.gold.tolist() == [0, 1, 2]
    assert batch.split is None and batch.features is None


def test_parts_with_headers_join_annotators_by_name(tmp_path):
    write(tmp_path, "train.tsv", "bob\tann\nyes\tno\nno\t\n")
    write(tmp_path, "valid.tsv", "cy\tbob\nyes\tyes\n")
    write(tmp_path, "items.txt", "v-one\n")
    source = {"kind": "wide", "header": True, "missing": "NA", "parts": [
        {"split": "train", "labels": "train.tsv"},
        {"split": "valid", "labels": "valid.tsv", "items": "items.txt"},
    ]}
    batch = read_source(load(tmp_path, source))
    assert batch.annotators == ["bob", "ann", "cy"]
    assert batch.classes == ["no", "yes"]
    assert batch.item_names == ["train/0", "train/1", "v-one"]
    assert batch.labels.tolist() == [[1, 0, -1], [0, -1, -1], [1, -1, 1]]
    assert batch.split is not None and batch.split.tolist() == [TRAIN, TRAIN, VALID]


def test_table_gold_file_and_split_column(tmp_path):
    """The long table: validation and test items come from a gold file keyed by item, with their
    split; the label rows need no empty-worker rows for them."""
    write(tmp_path, "labels.csv", "task,worker,label,split\nq1,w1,a,train\nq1,w2,b,train\nq2,w1,b,\nq3,w2,a,valid\n")
    write(tmp_path, "gold.csv", "task,gold,split\nq1,a,train\nq3,a,valid\nq4,b,test\nq5,a,valid\n")
    batch = read_source(load(tmp_path, {"kind": "table", "path": "labels.csv", "gold": "gold.csv",
                                        "split_column": "split"}))
    assert batch.item_names == ["q1", "q2", "q3", "q4", "q5"]
    assert batch.gold is not None and batch.gold.tolist() == [0, -1, 0, 1, 0]
    assert batch.split is not None and batch.split.tolist() == [TRAIN, -1, VALID, TEST, VALID]
    assert batch.labels[3:].max() == -1  # q4, q5: gold only


def test_table_gold_file_with_npy_features_and_gold_column(tmp_path):
    write(tmp_path, "labels.csv", "task,worker,label,gold\n0,w1,x,x\n1,w1,y,\n")
    write(tmp_path, "g.tsv", "id\tanswer\tsplit\n2\ty\ttest\n1\ty\t\n")
    batch = read_source(load(tmp_path, {"kind": "table", "path": "labels.csv", "gold_column": "gold",
                                        "gold": "g.tsv", "gold_item_column": "id", "gold_label_column": "answer",
                                        "split_column": "split", "features": npy(tmp_path, "f.npy", 3)}))
    assert batch.item_names == ["0", "1", "2"]
    assert batch.gold is not None and batch.gold.tolist() == [0, 1, 1]
    assert batch.split is not None and batch.split.tolist() == [-1, -1, TEST]
    assert batch.features is not None and np.array_equal(batch.features, np.load(tmp_path / "f.npy"))


def test_old_gold_only_rows_still_read_without_a_split(tmp_path):
    """The shared configs and older tables write test items as rows with no worker and no label."""
    write(tmp_path, "labels.csv", "task,worker,label,gold\nq1,w1,0,0\nq1,w2,1,0\nq3,,,1\n")
    batch = read_source(load(tmp_path, {"kind": "table", "path": "labels.csv", "gold_column": "gold"}))
    assert batch.split is None and batch.gold is not None and batch.gold.tolist() == [0, 1]


@pytest.mark.parametrize("name", ["bluebirds", "rte", "temp", "wsd"])
def test_shared_configs_give_no_split(name):
    assert read_source(load_config(CONFIGS / f"{name}.yaml")).split is None


# --- bad split input, through the command line ---------------------------------------------------

ANSWERS = "0 -1\n1 1\n"


def parts(**overrides: Any) -> dict[str, Any]:
    source: dict[str, Any] = {"kind": "wide", "parts": [
        {"split": "train", "labels": "answers.txt", "gold": "gold_train.txt"},
        {"split": "test", "gold": "gold_test.txt"}]}
    source.update(overrides)
    return source


def base_files(d: Path) -> None:
    write(d, "answers.txt", ANSWERS)
    write(d, "gold_train.txt", "0\n1\n")
    write(d, "gold_test.txt", "1\n0\n1\n")


def case_test_labels(d: Path) -> Path:
    base_files(d)
    write(d, "test_answers.txt", "0 -1\n-1 -1\n-1 -1\n")
    source = parts()
    source["parts"][1]["labels"] = "test_answers.txt"
    return write_config(d, source)


def case_rows(d: Path) -> Path:
    base_files(d)
    write(d, "gold_train.txt", "0\n1\n1\n")
    return write_config(d, parts())


def case_feature_rows(d: Path) -> Path:
    base_files(d)
    source = parts()
    source["parts"][0]["features"] = npy(d, "f_train.npy", 2)
    source["parts"][1]["features"] = npy(d, "f_test.npy", 4)
    return write_config(d, source)


def case_missing_class(d: Path) -> Path:
    base_files(d)
    return write_config(d, parts(missing=1), classes=[0, 1])


def case_missing_inside(d: Path) -> Path:
    write(d, "answers.txt", "0 3\n2 3\n3 3\n")
    return write_config(d, {"kind": "wide", "labels": "answers.txt", "missing": 1})


def case_unknown_split(d: Path) -> Path:
    write(d, "m.csv", "split,a,b\ntrain,0,1\nholdout,1,1\n")
    return write_config(d, {"kind": "wide", "labels": "m.csv", "header": True, "split_column": "split"})


def case_split_column_test_labels(d: Path) -> Path:
    write(d, "m.csv", "split,a,b\ntrain,0,1\ntest,,1\n")
    return write_config(d, {"kind": "wide", "labels": "m.csv", "header": True, "split_column": "split"})


def case_short_row(d: Path) -> Path:
    write(d, "answers.txt", "0 1 -1\n1 1\n")
    return write_config(d, {"kind": "wide", "labels": "answers.txt"})


def case_gold_only_without_split(d: Path) -> Path:
    write(d, "labels.csv", "task,worker,label\nq1,w1,0\n")
    write(d, "gold.csv", "task,gold\nq1,0\nq2,1\n")
    return write_config(d, {"kind": "table", "path": "labels.csv", "gold": "gold.csv"})


def case_table_unknown_split(d: Path) -> Path:
    write(d, "labels.csv", "task,worker,label\nq1,w1,0\n")
    write(d, "gold.csv", "task,gold,split\nq1,0,train\nq2,1,tset\n")
    return write_config(d, {"kind": "table", "path": "labels.csv", "gold": "gold.csv", "split_column": "split"})


def case_table_test_labels(d: Path) -> Path:
    write(d, "labels.csv", "task,worker,label,split\nq1,w1,0,train\nq2,w1,1,test\n")
    return write_config(d, {"kind": "table", "path": "labels.csv", "split_column": "split"})


def case_table_two_splits(d: Path) -> Path:
    write(d, "labels.csv", "task,worker,label,split\nq1,w1,0,train\nq1,w2,1,valid\n")
    return write_config(d, {"kind": "table", "path": "labels.csv", "split_column": "split"})


def case_table_split_column_absent(d: Path) -> Path:
    write(d, "labels.csv", "task,worker,label\nq1,w1,0\n")
    return write_config(d, {"kind": "table", "path": "labels.csv", "split_column": "fold"})


def case_widths(d: Path) -> Path:
    base_files(d)
    write(d, "valid.txt", "0 1 1\n")
    source = parts()
    source["parts"].append({"split": "valid", "labels": "valid.txt"})
    return write_config(d, source)


def case_features_in_one_part(d: Path) -> Path:
    base_files(d)
    source = parts()
    source["parts"][0]["features"] = npy(d, "f_train.npy", 2)
    return write_config(d, source)


# case: (build the files, return the config; words stderr must hold: file, field, value, problem)
BAD: dict[str, tuple[Any, list[str]]] = {
    "a test part with crowd labels": (case_test_labels, ["test_answers.txt", "'split'", "'test'", "row 1", "crowd label"]),
    "gold rows differ from the labels": (case_rows, ["gold_train.txt", "'gold'", "3 rows", "answers.txt", "has 2"]),
    "feature rows differ from the gold": (case_feature_rows, ["f_test.npy", "'features'", "4 rows", "gold_test.txt"]),
    "missing code is a class": (case_missing_class, ["answers.txt", "'missing'", "(value: 1)", "configured classes"]),
    "missing code among the classes": (case_missing_inside, ["answers.txt", "'missing'", "(value: 1)", "hide a class"]),
    "unknown split value": (case_unknown_split, ["m.csv", "'split'", "'holdout'", "unknown split"]),
    "test row with labels (split column)": (case_split_column_test_labels, ["m.csv", "'split'", "'test'", "crowd label"]),
    "a short row": (case_short_row, ["answers.txt", "'labels'", "line 2 has 2 fields"]),
    "gold-only item without a split": (case_gold_only_without_split, ["gold.csv", "'split'", "'q2'", "no split"]),
    "unknown split in the gold file": (case_table_unknown_split, ["gold.csv", "'split'", "'tset'", "unknown split"]),
    "table test item with labels": (case_table_test_labels, ["labels.csv", "'split'", "'test'", "'q2'"]),
    "an item in two splits": (case_table_two_splits, ["labels.csv", "'split'", "'valid'", "two different splits"]),
    "split column not there": (case_table_split_column_absent, ["labels.csv", "'split_column'", "'fold'"]),
    "parts of different widths": (case_widths, ["valid.txt", "'labels'", "(value: 3)", "by position"]),
    "features in one part only": (case_features_in_one_part, ["gold_test.txt", "'features'", "another part"]),
}


@pytest.fixture(scope="module")
def toy(prefect_harness, tmp_path_factory) -> tuple[Path, Path]:
    """An ingested wide dataset `toy`: no bad case may change its store."""
    folder = tmp_path_factory.mktemp("toy")
    base_files(folder)
    root = folder / "root"
    assert main(["ingest", str(write_config(folder, parts())), "--root", str(root)]) == 0
    return root, Path(RootLayout(root).dataset_uri("toy"))


@pytest.mark.parametrize("case", list(BAD))
def test_bad_split_input_exits_2(toy, tmp_path, capsys, case):
    root, store = toy
    before = tree_digest(store)
    build, words = BAD[case]
    bad = build(tmp_path)
    capsys.readouterr()
    assert main(["ingest", str(bad), "--root", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    check_message(err, words)
    assert str(tmp_path) in err  # the file by its full path
    assert tree_digest(store) == before


def test_toy_store_has_the_split(toy):
    store = DatasetStore.open(toy[1])
    assert store.read_split().tolist() == [TRAIN, TRAIN, TEST, TEST, TEST]
    assert store.read_gold().tolist() == [0, 1, 1, 0, 1]


def test_bad_config_layouts_are_refused(tmp_path):
    base_files(tmp_path)
    with pytest.raises(InputError, match="header: true"):
        load(tmp_path, {"kind": "wide", "labels": "answers.txt", "split_column": "s"})
    with pytest.raises(InputError, match="not both"):
        load(tmp_path, {**parts(), "labels": "answers.txt"})
    with pytest.raises(InputError, match="labels, features or gold"):
        load(tmp_path, {"kind": "wide", "parts": [{"split": "test"}]})
    with pytest.raises(InputError, match="source.parts"):
        load(tmp_path, {"kind": "wide", "parts": [{"split": "holdout", "labels": "answers.txt"}]})
