"""`annostyle ingest` from the command line: JSON summary, exit codes, and bad input that leaves
the store as it was (each case names the file, the field and the value)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import CONFIGS, PROJECT, tree_digest

from flows.cli import main
from storage.layout import RootLayout

GOOD_CSV = "task,worker,label,gold\nq1,w1,0,0\nq1,w2,1,0\nq2,w1,1,1\nq2,w2,1,1\nq3,,,0\n"


def write_toy(folder: Path, csv: str = GOOD_CSV, features: np.ndarray | None = None,
              extra: str = "", name: str = "toy") -> Path:
    """A small table dataset with an .npy feature matrix (row i = item id qi+1 -> see ids)."""
    (folder / "labels.csv").write_text(csv)
    feats = np.arange(9, dtype=np.float32).reshape(3, 3) if features is None else features
    np.save(folder / "features.npy", feats)
    (folder / "features.csv").write_text(
        "task,f0,f1,f2\n" + "".join(f"q{i + 1},{r[0]},{r[1]},{r[2]}\n" for i, r in enumerate(feats)))
    config = folder / f"{name}.yaml"
    config.write_text(textwrap.dedent(f"""\
        name: {name}
        source:
          kind: table
          path: labels.csv
          gold_column: gold
          features: features.csv
        classes: [0, 1]
        """) + extra)
    return config


def run_cli(*argv: str) -> int:
    return main(list(argv))


def ingested_toy(folder: Path) -> tuple[Path, Path]:
    data, root = folder / "data", folder / "root"
    data.mkdir()
    assert run_cli("ingest", str(write_toy(data)), "--root", str(root)) == 0
    return data, root


@pytest.fixture(scope="module")
def shared_toy(prefect_harness, tmp_path_factory):
    """One ingested toy store for the bad-input cases: none of them may change it."""
    return ingested_toy(tmp_path_factory.mktemp("toy"))


@pytest.fixture
def toy_root(prefect_harness, tmp_path):
    return ingested_toy(tmp_path)


def tracks(folder: Path, lengths: dict[str, int]) -> None:
    for annotator, n in lengths.items():
        (folder / annotator).mkdir(parents=True, exist_ok=True)
        (folder / annotator / "night1.json").write_text(json.dumps([0] * n))


BAD = {
    "missing file": (lambda d: write_toy(d, extra="").read_text().replace("labels.csv", "nope.csv"),
                     ["source.path", "nope.csv"]),
    "misnamed column": (lambda d: write_toy(d, extra="").read_text().replace("gold_column: gold", "gold_column: gld"),
                        ["labels.csv", "gold_column", "gld"]),
    "label outside classes": (lambda d: write_toy(d, csv=GOOD_CSV.replace("q2,w2,1,1", "q2,w2,7,1")).read_text(),
                              ["labels.csv", "label", "7"]),
    "unknown annotator": (lambda d: write_toy(d, extra="annotators: [w1]\n").read_text(),
                          ["labels.csv", "worker", "w2"]),
    "empty batch": (lambda d: write_toy(d, csv="task,worker,label,gold\n").read_text(),
                    ["labels.csv", "empty"]),
    "NaN in features": (lambda d: write_toy(d, features=np.array([[0, 1, 2], [3, np.nan, 5], [6, 7, 8]],
                                                                 np.float32)).read_text(),
                        ["features.csv", "features", "nan"]),
    "feature rows do not match": (lambda d: write_toy(d, features=np.zeros((2, 3), np.float32)).read_text(),
                                  ["features.csv", "q3"]),
    "name escapes the root": (lambda d: write_toy(d).read_text().replace("name: toy", "name: ../x"),
                              ["name", "../x"]),
    "not a mapping": (lambda d: "- just\n- a list\n", ["bad.yaml", "mapping", "list"]),
    "unknown key": (lambda d: write_toy(d).read_text() + "colour: blue\n", ["colour", "Extra inputs"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_fails_clearly_and_leaves_the_store_as_it_was(shared_toy, tmp_path, capsys, case):
    data, root = shared_toy
    store = Path(RootLayout(root).dataset_uri("toy"))
    before = tree_digest(store)
    make, words = BAD[case]
    text = make(data)
    bad = data / "bad.yaml"
    bad.write_text(text)
    capsys.readouterr()
    assert run_cli("ingest", str(bad), "--root", str(root), "--json") == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    message = captured.err.lower()
    for word in words:
        assert word.lower() in message, f"{word!r} not in {captured.err!r}"
    assert tree_digest(store) == before
    assert sorted(p.name for p in store.parent.iterdir()) == ["toy.zarr"]
    assert not (root / "x.zarr").exists() and not (data / "x.zarr").exists()
    write_toy(data)  # the next case starts from the good files


def test_tracks_of_different_lengths_fail_and_leave_the_store(prefect_harness, tmp_path, root, capsys):
    data = tmp_path / "tracks"
    tracks(data, {"alice": 5, "bob": 5})
    config = tmp_path / "nights.yaml"
    config.write_text(f"name: nights\nsource: {{kind: tracks, paths: [{data}]}}\n")
    assert run_cli("ingest", str(config), "--root", str(root)) == 0
    nights = Path(RootLayout(root).dataset_uri("nights"))
    before = tree_digest(nights)
    tracks(data, {"carol": 6})
    capsys.readouterr()
    assert run_cli("ingest", str(config), "--root", str(root)) == 2
    err = capsys.readouterr().err
    assert "night1" in err and "6" in err and "5" in err and "carol" in err
    assert tree_digest(nights) == before


def test_new_batch_with_new_items_and_annotator_appends(toy_root, capsys):
    data, root = toy_root
    csv = GOOD_CSV + "q1,w3,0,0\n"
    config = write_toy(data, csv=csv)
    capsys.readouterr()
    assert run_cli("ingest", str(config), "--root", str(root), "--json") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["batch_status"] == "appended"
    assert summary["n_annotators"] == 3 and summary["n_labels"] == 5
    assert summary["batch"]["changed_frames"] == 3 and summary["batch"]["new_frames"] == 0


@pytest.mark.slow
def test_console_script_prints_json_last_and_exits_nonzero_on_error(prefect_harness, root):
    """The installed `annostyle` command, in its own process, against the harness's Prefect API."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    exe = str(Path(sys.executable).parent / "annostyle")
    done = subprocess.run([exe, "ingest", str(CONFIGS / "bluebirds.yaml"), "--root", str(root), "--json"],
                          capture_output=True, text=True, env=env, cwd=PROJECT, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("dataset", "version", "n_items", "n_sequences", "n_frames", "n_annotators", "n_labels",
                "n_classes", "classes", "store", "mlflow_run_id", "batch_status"):
        assert key in summary
    assert (summary["n_items"], summary["n_annotators"], summary["n_labels"], summary["n_classes"]) == \
        (108, 39, 4212, 2)
    again = subprocess.run([exe, "ingest", str(CONFIGS / "bluebirds.yaml"), "--root", str(root), "--json"],
                           capture_output=True, text=True, env=env, cwd=PROJECT, timeout=300)
    assert json.loads(again.stdout.strip().splitlines()[-1])["batch_status"] == "unchanged"
    bad = subprocess.run([exe, "ingest", "configs/nope.yaml", "--root", str(root)],
                         capture_output=True, text=True, env=env, cwd=PROJECT, timeout=300)
    assert bad.returncode == 2 and "nope.yaml" in bad.stderr


@pytest.mark.slow
def test_run_with_several_configs_is_one_process_with_a_parent_run_each(prefect_harness, root, capsys):
    """`annostyle run A B --jobs 2`: both pipelines in this one call, side by side, each with its
    own MLflow parent run and nested stage runs; the summary lists each dataset in the order given."""
    from flows.run import cli_print
    from storage.results.multi import MultiPipelineResult
    from storage.tracking.runs import list_runs

    configs = [str(CONFIGS / "bluebirds.yaml"), str(CONFIGS / "wsd.yaml")]
    capsys.readouterr()
    assert run_cli("run", *configs, "--root", str(root), "--json", "--jobs", "2") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["jobs"] == 2
    runs = summary["runs"]
    assert [r["result"]["dataset"] for r in runs] == ["bluebirds", "wsd"]
    assert [r["config"] for r in runs] == configs
    parents = [r["result"]["mlflow_run_id"] for r in runs]
    assert len(set(parents)) == 2 and all(parents)
    for r in runs:
        assert r["result"]["stages"]["ingest"]["status"] == "ran"
        assert r["result"]["stages"]["analyze"]["status"] == "ran" and r["result"]["clusters"]
    recorded = {r.run_id: r for r in list_runs(RootLayout(root).local_tracking_uri, limit=10)}
    assert set(parents) <= set(recorded)
    assert {recorded[p].dataset for p in parents} == {"bluebirds", "wsd"}

    cli_print(MultiPipelineResult.model_validate(summary))
    text = capsys.readouterr().out
    assert "2 datasets in one process and one flow, 2 at a time" in text
    for r in runs:
        assert r["result"]["mlflow_run_id"] in text and f"pipeline {r['result']['dataset']}" in text

    # a bad config among several fails before anything runs: nothing new is recorded
    bad = root / "bad.yaml"
    bad.write_text("name: bad\n")
    assert run_cli("run", configs[0], str(bad), "--root", str(root)) == 2
    assert "bad.yaml" in capsys.readouterr().err
    assert len(list_runs(RootLayout(root).local_tracking_uri, limit=10)) == 2
