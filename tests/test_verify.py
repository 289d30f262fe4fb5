"""`annostyle verify CONFIG`: exit 0 on an intact store, exit 2 and the damaged files named otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import PROJECT, make_batch

from configs.schema import StoreConfig
from flows.cli import main
from storage.dataset_store import open_or_create
from storage.layout import RootLayout


@pytest.fixture
def toy(tmp_path) -> tuple[Path, Path, Path]:
    """A config, its root, and its dataset store with two batches (one changes rows: history/1)."""
    (tmp_path / "labels.csv").write_text("task,worker,label\nq1,w1,0\n")
    config = tmp_path / "toy.yaml"
    config.write_text(textwrap.dedent("""\
        name: toy
        source: {kind: table, path: labels.csv}
        classes: [a, b, c]
        """))
    root = tmp_path / "root"
    uri = RootLayout(root).dataset_uri("toy")
    store = open_or_create(uri, StoreConfig(chunk_frames=4), ["a", "b", "c"], None)
    store.append(make_batch(["s0", "s1"], [6, 3], ["A"], [0, 1, 2] * 3))
    store.append(make_batch(["s0"], [6], ["B"], [1] * 6))  # same seed: the same features on s0
    return config, root, Path(uri)


def test_an_intact_store_verifies_clean(toy, capsys):
    config, root, uri = toy
    assert main(["verify", str(config), "--root", str(root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    (dataset,) = [s for s in out["stores"] if s["kind"] == "dataset"]
    names = {a["name"] for a in dataset["arrays"]}
    assert {"features", "labels", "gold", "offsets", "sequence_names", "history/1/labels"} <= names
    assert all(a["chunks"] > 0 and a["damaged"] == [] for a in dataset["arrays"])


def test_every_damaged_file_is_listed_and_the_exit_code_is_2(toy, capsys):
    config, root, uri = toy
    deleted = uri / "labels" / "c" / "1" / "0"
    deleted.unlink()
    flipped = uri / "features" / "c" / "0" / "0"
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 1
    flipped.write_bytes(bytes(data))
    truncated = uri / "history" / "1" / "gold" / "c" / "0"
    truncated.write_bytes(truncated.read_bytes()[:3])
    assert main(["verify", str(config), "--root", str(root)]) == 2
    captured = capsys.readouterr()
    for file in (deleted, flipped, truncated):
        assert str(file) in captured.out
    assert "DAMAGED (3 files)" in captured.out and "annostyle: error:" in captured.err
    assert main(["verify", str(config), "--root", str(root), "--json"]) == 2
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    damaged = {d["file"] for s in out["stores"] for a in s["arrays"] for d in a["damaged"]}
    assert damaged == {str(deleted), str(flipped), str(truncated)}


def test_an_edited_manifest_is_reported_and_the_chunks_still_checked(toy, capsys):
    config, root, uri = toy
    doc = json.loads((uri / "zarr.json").read_text())
    doc["attributes"]["manifest"]["batches"][-1]["totals"]["n_frames"] = 8
    (uri / "zarr.json").write_text(json.dumps(doc))
    (uri / "gold" / "c" / "0").unlink()
    assert main(["verify", str(config), "--root", str(root), "--json"]) == 2
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    (dataset,) = out["stores"][:1]
    assert [d["file"] for d in dataset["damaged"]] == [str(uri / "zarr.json")]
    assert [d["file"] for a in dataset["arrays"] for d in a["damaged"]] == [str(uri / "gold" / "c" / "0")]


def test_the_command_line_exits_2_in_a_real_process(toy):
    config, root, uri = toy
    (uri / "offsets" / "c" / "0").unlink()
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "verify", str(config), "--root", str(root)],
                          cwd=PROJECT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(PROJECT)})
    assert proc.returncode == 2, proc.stderr
    assert str(uri / "offsets" / "c" / "0") in proc.stdout and "Traceback" not in proc.stderr
