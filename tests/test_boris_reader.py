"""BORIS aggregated events: the fixtures in tests/data/boris ingest to the tracks written by hand
below (frame arithmetic at the edges: a bout stopping exactly on a frame boundary, POINT events, an
event at 0, the last frame, BORIS's millisecond rounding), and bad exports are refused through the
command line naming the file, the line and the value, with nothing written to the root."""

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

DATA = Path(__file__).resolve().parent / "data" / "boris"
CLASSES = ["attack", "background", "bite", "groom", "rear", "sniff"]
A, BG, BITE, GROOM, REAR, S = range(6)
# alice.tsv, mouse1.mp4 at 10 frames/s, 2.000 s: attack [0, 0.5) -> frames 0-4 (0.5 is frame 5's
# start, so frame 5 is out); sniff [0.5, 0.73) -> 5-7; groom POINT 1.05 -> frame 10; attack
# [1.23, 2.0) -> 13-19 (19 is the last frame); bite POINT 1.5 -> frame 15, over the attack.
ALICE_1 = [A, A, A, A, A, S, S, S, BG, BG, GROOM, BG, BG, A, A, BITE, A, A, A, A]
# bob.csv, mouse1.mp4: attack [0, 0.6) -> 0-5; sniff [0.6, 0.7) -> frame 6 only; attack
# [1.3, 1.999) -> 13-19 (frame 19 starts at 1.9 < 1.999).
BOB_1 = [A, A, A, A, A, A, S, BG, BG, BG, BG, BG, BG, A, A, A, A, A, A, A]
# alice.tsv, mouse2.mp4 at 30 frames/s, 0.333 s = 9.99 frames: BORIS writes milliseconds, so times
# within 0.5 ms of a frame boundary are on it: 10 frames; sniff [0.067, 0.167) is [2/30, 5/30) ->
# frames 2-4 (unrounded, 0.067 s would leave frame 2 out and 0.167 s take frame 5 in); groom POINT
# 0.233 s is 7/30 -> frame 7 (not 6); rear POINT 0.3 -> frame 9, the last.
ALICE_2 = [BG, BG, S, S, S, BG, BG, GROOM, BG, REAR]
MISSING = -1
EXPECTED = np.array([[a, b] for a, b in zip(ALICE_1, BOB_1, strict=True)] + [[a, MISSING] for a in ALICE_2])

HEADER = "Observation id\tMedia file name\tMedia duration (s)\tFPS (frame/s)\tSubject\tBehavior\tBehavior type\tStart (s)\tStop (s)\n"


def write_config(folder: Path, source: dict[str, Any], name: str = "boris", **top: Any) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "source": {"kind": "boris", **source}, **top}))
    return path


def export(folder: Path, rows: list[str], file: str = "obs.tsv", header: str = HEADER) -> Path:
    """A small export: each row is tab-separated cells in the header's order."""
    path = folder / file
    path.write_text(header + "".join(r + "\n" for r in rows))
    return path


def row(behavior: str, kind: str, start: str, stop: str, *, media: str = "m.mp4", fps: str = "10",
        duration: str = "2.0", subject: str = "No focal subject", obs: str = "o1") -> str:
    return "\t".join([obs, media, duration, fps, subject, behavior, kind, start, stop])


def fixture_paths() -> list[str]:
    return [str(DATA / "alice.tsv"), str(DATA / "bob.csv")]


# --- the fixtures --------------------------------------------------------------------------------


def test_fixture_exports_read_to_the_hand_written_tracks(tmp_path: Path) -> None:
    batch = read_source(load_config(write_config(tmp_path, {"paths": fixture_paths()})))
    assert batch.sequence_names == ["mouse1.mp4", "mouse2.mp4"]
    assert batch.sequence_lengths.tolist() == [20, 10]
    assert batch.annotators == ["alice", "bob"]  # one export per observer, named by its file
    assert batch.classes == CLASSES
    np.testing.assert_array_equal(batch.labels, EXPECTED)
    assert "frame_rate" not in batch.meta  # 10 and 30 frames/s: no one rate for the style lags in seconds


def test_frame_arithmetic_at_the_edges(tmp_path: Path) -> None:
    batch = read_source(load_config(write_config(tmp_path, {"paths": fixture_paths()})))
    alice = batch.labels[:20, 0]
    assert alice[0] == A  # an event starting at 0 labels frame 0
    assert (alice[4], alice[5]) == (A, S)  # attack stops at 0.5 s, exactly frame 5's start: 5 is sniff's
    assert alice[7] == S and alice[8] == BG  # sniff stops at 0.73 s, inside frame 7: 7 is in, 8 is not
    assert alice[10] == GROOM and alice[9] == alice[11] == BG  # a POINT labels the one frame its time is in
    assert alice[15] == BITE and alice[14] == alice[16] == A  # a POINT inside a STATE bout labels its frame
    assert alice[19] == A  # a bout up to the media's end labels the last frame
    assert batch.labels[20 + 9, 0] == REAR  # a POINT in the last frame
    # at 30/s, 0.067 s is frame 2's start, 0.167 s frame 5's and 0.233 s frame 7's (written to the ms)
    assert batch.labels[20 + 1: 20 + 6, 0].tolist() == [BG, S, S, S, BG]
    assert batch.labels[20 + 7, 0] == GROOM


def test_frame_rate_and_length_from_the_config_and_the_last_event(tmp_path: Path) -> None:
    """Without an FPS or duration column: the config's frame_rate, and the length ends with the last
    event (a POINT's frame included); without either frame rate it is an error."""
    header = "Media file name\tBehavior\tBehavior type\tStart (s)\tStop (s)\n"
    export(tmp_path, ["m.mp4\twalk\tSTATE\t0.2\t0.4", "m.mp4\tjump\tPOINT\t0.45\tNA"], header=header)
    batch = read_source(load_config(write_config(tmp_path, {"paths": ["obs.tsv"], "frame_rate": 20})))
    assert batch.sequence_lengths.tolist() == [10]  # 0.45 s * 20 = frame 9, the last
    assert batch.classes == ["background", "jump", "walk"]
    assert batch.labels[:, 0].tolist() == [0, 0, 0, 0, 2, 2, 2, 2, 0, 1]
    assert batch.meta == {"frame_rate": 20}  # the style explanations give lags in seconds with it
    with pytest.raises(InputError, match="no frame rate") as err:
        read_source(load_config(write_config(tmp_path, {"paths": ["obs.tsv"]})))
    assert "obs.tsv" in str(err.value) and "line 2" in str(err.value)


def test_subjects_observer_column_and_fixed_classes(tmp_path: Path) -> None:
    header = "Observer\t" + HEADER
    rows = ["ann\t" + row("walk", "STATE", "0", "0.3", subject="rat1", duration="0.5"),
            "ann\t" + row("walk", "STATE", "0.1", "0.2", subject="rat2", duration="0.5"),
            "cy\t" + row("rest", "STATE", "0.2", "0.5", subject="rat1", duration="0.5", obs="o2")]
    export(tmp_path, rows, header=header)
    config = write_config(tmp_path, {"paths": ["obs.tsv"], "observer_column": "Observer", "background": "other"},
                          classes=["walk", "rest", "other"])
    batch = read_source(load_config(config))
    assert batch.sequence_names == ["m.mp4/rat1", "m.mp4/rat2"]  # a sequence per media file and subject
    assert batch.annotators == ["ann", "cy"] and batch.classes == ["walk", "rest", "other"]
    assert batch.labels[:, 0].tolist() == [0, 0, 0, 2, 2, 2, 0, 2, 2, 2]
    assert batch.labels[:, 1].tolist() == [2, 2, 1, 1, 1, -1, -1, -1, -1, -1]


def test_priority_ranks_overlapping_behaviours(tmp_path: Path) -> None:
    export(tmp_path, [row("walk", "STATE", "0", "0.5"), row("sniff", "STATE", "0.3", "0.8")])
    config = write_config(tmp_path, {"paths": ["obs.tsv"], "priority": ["sniff", "walk"]})
    labels = read_source(load_config(config)).labels[:10, 0].tolist()
    assert labels == [2, 2, 2, 1, 1, 1, 1, 1, 0, 0]  # background, sniff, walk: sniff wins frames 3-4
    with pytest.raises(InputError, match="list both in `priority`"):
        read_source(load_config(write_config(tmp_path, {"paths": ["obs.tsv"], "priority": ["sniff"]})))


def test_time_offsets_and_observations_over_several_media_are_refused(tmp_path: Path) -> None:
    """BORIS adds an observation's offset to its times and runs times on across a playlist's media
    files; neither maps to one media file's frames, so both are errors naming the line and value."""
    export(tmp_path, [row("walk", "STATE", "0", "0.5") + "\t1.5"], header=HEADER.rstrip("\n") + "\tTime offset (s)\n")
    with pytest.raises(InputError, match="line 2: a non-zero time offset") as err:
        read_source(load_config(write_config(tmp_path, {"paths": ["obs.tsv"]})))
    assert "'Time offset (s)'" in str(err.value) and "'1.5'" in str(err.value)
    export(tmp_path, [row("walk", "STATE", "0", "0.5", fps="25.000;30.000")])
    with pytest.raises(InputError, match="line 2: an observation over several media files") as err:
        read_source(load_config(write_config(tmp_path, {"paths": ["obs.tsv"]})))
    assert "'25.000;30.000'" in str(err.value)


def test_a_state_event_shorter_than_a_frame_without_a_frame_start_labels_nothing(tmp_path: Path) -> None:
    export(tmp_path, [row("walk", "STATE", "0.01", "0.09"), row("walk", "STATE", "0.19", "0.21")])
    labels = read_source(load_config(write_config(tmp_path, {"paths": ["obs.tsv"]}))).labels[:4, 0].tolist()
    assert labels == [0, 0, 1, 0]  # [0.01, 0.09) holds no frame start at 10/s; [0.19, 0.21) holds 0.2's


# --- through the command line ------------------------------------------------------------------


@pytest.fixture(scope="module")
def ingested(prefect_harness, tmp_path_factory) -> tuple[Path, Path]:
    """The fixtures ingested through `annostyle ingest`: the root and the store."""
    folder = tmp_path_factory.mktemp("boris")
    root = folder / "root"
    assert main(["ingest", str(write_config(folder, {"paths": fixture_paths()})), "--root", str(root)]) == 0
    return root, Path(RootLayout(root).dataset_uri("boris"))


def test_cli_ingest_stores_the_expected_tracks(ingested) -> None:
    store = DatasetStore.open(ingested[1])
    assert store.classes == CLASSES and store.annotators == ["alice", "bob"]
    assert store.sequence_names.tolist() == ["mouse1.mp4", "mouse2.mp4"]
    np.testing.assert_array_equal(store.read_labels(), EXPECTED)


BAD: dict[str, tuple[list[str], dict[str, Any], list[str]]] = {
    "overlapping STATE events of one behaviour": (
        [row("walk", "STATE", "0", "0.5"), row("walk", "STATE", "0.4", "0.9")], {},
        ["obs.tsv", "'Start (s)'", "line 3", "0.4", "line 2", "may not overlap"]),
    "a stop before its start": ([row("walk", "STATE", "0.5", "0.2")], {},
                                ["obs.tsv", "'Stop (s)'", "line 2", "0.2", "stops before it starts"]),
    "an unknown behaviour with fixed classes": (
        [row("walk", "STATE", "0", "0.5"), row("fly", "POINT", "0.7", "0.7")], {"classes": ["walk", "background"]},
        ["obs.tsv", "'Behavior'", "line 3", "'fly'", "configured classes"]),
    "a missing frame rate": ([row("walk", "STATE", "0", "0.5", fps="NA")], {},
                             ["obs.tsv", "'FPS (frame/s)'", "line 2", "'NA'", "no frame rate"]),
    "a non-numeric time": ([row("walk", "STATE", "0", "0.5"), row("walk", "STATE", "1,5", "1.8")], {},
                           ["obs.tsv", "'Start (s)'", "line 3", "'1,5'", "not a number"]),
    "overlapping behaviours without priority": (
        [row("walk", "STATE", "0", "0.5"), row("sniff", "STATE", "0.3", "0.8")], {},
        ["obs.tsv", "'Behavior'", "line 3", "'sniff'", "'walk'", "line 2", "frame 3", "one label"]),
    "an unknown behaviour type": ([row("walk", "EVENT", "0", "0.5")], {},
                                  ["obs.tsv", "'Behavior type'", "line 2", "'EVENT'", "STATE or POINT"]),
    "an event past the media's end": ([row("walk", "STATE", "1.5", "2.5")], {},
                                      ["obs.tsv", "'Stop (s)'", "line 2", "2.5", "media's end"]),
    "one observer coding a sequence twice": ([row("walk", "STATE", "0", "0.5"), row("walk", "STATE", "1", "1.5", obs="o2")],
                                             {}, ["obs.tsv", "'Observation id'", "line 3", "'o2'", "'o1'"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_export_exits_2_naming_file_line_and_value(ingested, tmp_path, capsys, case) -> None:
    root, store = ingested
    before = tree_digest(store)
    rows, top, words = BAD[case]
    export(tmp_path, rows)
    config = write_config(tmp_path, {"paths": ["obs.tsv"]}, name="bad", **top)
    capsys.readouterr()
    assert main(["ingest", str(config), "--root", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    check_message(err, words)
    assert str(tmp_path / "obs.tsv") in err
    assert tree_digest(store) == before  # nothing written: the store's bytes unchanged, no store `bad`
    assert sorted(p.name for p in store.parent.iterdir()) == ["boris.zarr"]


def test_a_point_at_the_media_end_labels_the_last_frame(tmp_path: Path) -> None:
    """BORIS's player stops at the media's end, and a POINT coded there has the media duration as
    its time: it is in the last frame, not past the end. (At 30/s, 0.333 s is both the end of a
    10-frame media and, on BORIS's milliseconds, 10/30 s.)"""
    export(tmp_path, [row("jump", "POINT", "2.0", "NA"), row("walk", "STATE", "0", "0.5")])
    labels = read_source(load_config(write_config(tmp_path, {"paths": ["obs.tsv"]}))).labels[:, 0].tolist()
    assert len(labels) == 20 and labels[19] == 1 and labels[:6] == [2] * 5 + [0]  # background, jump, walk
    export(tmp_path, [row("jump", "POINT", "0.333", "NA", fps="30", duration="0.333")])
    labels = read_source(load_config(write_config(tmp_path, {"paths": ["obs.tsv"]}))).labels[:, 0].tolist()
    assert labels == [0] * 9 + [1]
    export(tmp_path, [row("jump", "POINT", "2.1", "NA")])  # past the end is still an error
    with pytest.raises(InputError, match="media's end"):
        read_source(load_config(write_config(tmp_path, {"paths": ["obs.tsv"]})))
