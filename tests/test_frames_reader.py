"""Per-frame wide label files (DeepEthogram's `<video>_labels.csv`, SimBA's targets_inserted CSV):
the fixtures in tests/data/frames ingest to the tracks written by hand below, and bad files are
refused through the command line naming the file, the line and the columns or value, with nothing
written to the root."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import check_message, tree_digest

from configs.schema import load_config
from errors import InputError
from flows.cli import main
from storage.dataset_store import DatasetStore
from storage.layout import RootLayout
from tasks.readers import read_source

DATA = Path(__file__).resolve().parent / "data" / "frames"
A, BG, S, NONE = 0, 1, 2, -1  # classes attack, background, sniff; -1 = not labelled
# alice/mouse1_labels.csv (DeepEthogram): background, attack, sniff columns; frame 7 has attack -1.
ALICE = [BG, A, A, S, BG, S, A, NONE]
# bob_mouse1.csv (SimBA): two feature columns, then attack and sniff; no 1 in frames 0, 1 and 5.
BOB = [BG, BG, A, A, S, BG, A, A]
EXPECTED = np.array([ALICE, BOB]).T


def files() -> list[dict[str, str]]:
    return [{"path": str(DATA / "alice" / "mouse1_labels.csv"), "annotator": "alice"},
            {"path": str(DATA / "bob_mouse1.csv"), "annotator": "bob", "sequence": "mouse1"}]


def write_config(folder: Path, source: dict[str, Any], name: str = "frames", **top: Any) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "source": {"kind": "frames", **source}, **top}))
    return path


def test_fixture_files_read_to_the_hand_written_tracks(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"files": files(), "behaviors": ["attack", "sniff"]})
    batch = read_source(load_config(config))
    assert batch.sequence_names == ["mouse1"]  # alice's from the file name without `_labels`
    assert batch.sequence_lengths.tolist() == [8] and batch.annotators == ["alice", "bob"]
    assert batch.classes == ["attack", "background", "sniff"]
    np.testing.assert_array_equal(batch.labels, EXPECTED)
    assert batch.labels[0, 0] == BG and batch.labels[7, 1] == A  # the first and the last frame


def test_deepethogram_columns_by_default_and_simba_needs_behaviors(tmp_path: Path) -> None:
    batch = read_source(load_config(write_config(tmp_path, {"files": files()[:1]})))
    assert batch.classes == ["attack", "background", "sniff"]  # the index and background are not behaviours
    assert batch.labels[:, 0].tolist() == ALICE
    with pytest.raises(InputError, match="set `behaviors`") as err:
        read_source(load_config(write_config(tmp_path, {"files": files()[1:]})))
    assert "bob_mouse1.csv" in str(err.value) and "Nose_x" in str(err.value) and "line 2" in str(err.value)


def test_priority_decides_a_frame_with_two_ones(tmp_path: Path) -> None:
    (tmp_path / "v.csv").write_text(",attack,sniff\n0,1,1\n1,0,1\n2,0,0\n")
    source = {"files": [{"path": "v.csv", "annotator": "a"}], "priority": ["sniff", "attack"]}
    assert read_source(load_config(write_config(tmp_path, source))).labels[:, 0].tolist() == [2, 2, 1]


def one(folder: Path, text: str, file: str = "v.csv", annotator: str = "a") -> dict[str, str]:
    (folder / file).write_text(text)
    return {"path": file, "annotator": annotator, "sequence": "v"}


# --- through the command line ------------------------------------------------------------------


@pytest.fixture(scope="module")
def ingested(prefect_harness, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("frames")
    root = folder / "root"
    config = write_config(folder, {"files": files(), "behaviors": ["attack", "sniff"]})
    assert main(["ingest", str(config), "--root", str(root)]) == 0
    return root, Path(RootLayout(root).dataset_uri("frames"))


def test_cli_ingest_stores_the_expected_tracks(ingested) -> None:
    store = DatasetStore.open(ingested[1])
    assert store.classes == ["attack", "background", "sniff"] and store.annotators == ["alice", "bob"]
    np.testing.assert_array_equal(store.read_labels(), EXPECTED)


GOOD = ",background,attack,sniff\n0,1,0,0\n1,0,1,0\n2,0,0,1\n"
BAD: dict[str, tuple[Any, dict[str, Any], list[str]]] = {
    "two 1s in one frame": (lambda d: [one(d, ",background,attack,sniff\n0,1,0,0\n1,0,1,1\n")], {},
                            ["v.csv", "line 3", "'attack'", "'sniff'", "one label"]),
    "background and a behaviour": (lambda d: [one(d, ",background,attack,sniff\n0,1,1,0\n")], {},
                                   ["v.csv", "'background'", "line 2", "'attack'"]),
    "a value other than 0, 1, -1": (lambda d: [one(d, ",background,attack,sniff\n0,1,0,0\n1,0,2,0\n")], {},
                                    ["v.csv", "'attack'", "line 3", "2", "1, 0 or -1"]),
    "sequences of different lengths": (lambda d: [one(d, GOOD), one(d, GOOD + "3,1,0,0\n", "w.csv", "b")], {},
                                       ["w.csv", "v.csv", "4 frames", "3", "same number of frames"]),
    "an unknown behaviour with fixed classes": (lambda d: [one(d, ",background,attack,fly\n0,1,0,0\n")],
                                                {"classes": ["attack", "background"]},
                                                ["v.csv", "'behaviors'", "'fly'", "configured classes"]),
    "a gap in the frame index": (lambda d: [one(d, ",background,attack,sniff\n0,1,0,0\n2,0,1,0\n")], {},
                                 ["v.csv", "'Unnamed: 0'", "line 3", "2", "expected 1"]),
    "one annotator's sequence twice": (lambda d: [one(d, GOOD), one(d, GOOD, "w.csv")], {},
                                       ["w.csv", "'a'", "'v'", "v.csv"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_file_exits_2_naming_file_row_and_value(ingested, tmp_path, capsys, case) -> None:
    root, store = ingested
    before = tree_digest(store)
    build, top, words = BAD[case]
    config = write_config(tmp_path, {"files": build(tmp_path)}, name="bad", **top)
    capsys.readouterr()
    assert main(["ingest", str(config), "--root", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    check_message(err, words)
    assert str(tmp_path) in err
    assert tree_digest(store) == before
    assert sorted(p.name for p in store.parent.iterdir()) == ["frames.zarr"]
