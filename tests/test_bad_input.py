"""Malformed input through the real command line: every case exits 2, names the file and the field,
and leaves the dataset store's bytes as they were; FIFOs and devices are refused, never read.

Each case writes its files into a fresh folder, next to a config for the already ingested dataset
`toy`, and runs `annostyle ingest` on it (the cases that could hang run in a child process under
a timeout, so a hang fails the test instead of stopping the run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.lib.format as npy_format
import pytest
from conftest import PROJECT, check_message, tree_digest

from configs.inputs import MAX_ANNOTATORS, MAX_CLASSES, MAX_DEPTH
from flows.cli import main
from storage.layout import RootLayout

LABELS = "w1: {a: x, b: y}\nw2: {a: x}\n"


def config(folder: Path, source: str, extra: str = "", name: str = "toy") -> Path:
    path = folder / "bad.yaml"
    path.write_text(f"name: {name}\nsource: {source}\n{extra}")
    return path


def mapping(folder: Path, text: str, file: str = "labels.yaml", **extra: str) -> Path:
    (folder / file).write_text(text)
    more = "".join(f", {k}: {v}" for k, v in extra.items())
    return config(folder, f"{{kind: mapping, labels: {file}{more}}}")


def track(folder: Path, text: str | None = None, link: str | None = None) -> Path:
    (folder / "night" / "alice").mkdir(parents=True)
    file = folder / "night" / "alice" / "s1.json"
    if link is not None:
        file.symlink_to(link)
    else:
        file.write_text(text or "[0]")
    return config(folder, "{kind: tracks, paths: [night]}")


def table(folder: Path, csv: str, extra: str = "", **source: str) -> Path:
    (folder / "labels.csv").write_text(csv)
    more = "".join(f", {k}: {v}" for k, v in source.items())
    return config(folder, f"{{kind: table, path: labels.csv{more}}}", extra)


def features(folder: Path, write: Callable[[Path], None]) -> Path:
    write(folder / "features.npy")
    return table(folder, "task,worker,label\n0,a,x\n1,a,y\n", features="features.npy")


def npy_unclosed_header(path: Path) -> None:
    """A .npy whose header dictionary never closes (numpy's parser raises a tokenizer error;
    found by tests/test_fuzz_readers.py)."""
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), "
    header += b" " * (63 - len(header) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(24))


def npy_header_only(path: Path) -> None:
    """A .npy whose header claims 10^12 rows of 5 float64 but holds 80 bytes."""
    with path.open("wb") as file:
        npy_format.write_array_header_1_0(file, {"descr": "<f8", "fortran_order": False, "shape": (10**12, 5)})
        file.write(b"\0" * 80)


def utf16(folder: Path) -> Path:
    path = folder / "bad.yaml"
    path.write_text("name: toy\nsource: {kind: demo}\n", encoding="utf-16")
    return path


def alias_bomb(folder: Path) -> Path:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)]
    return config(folder, "{kind: demo}", "\n".join(lines) + "\n")


def many_classes(folder: Path) -> Path:
    rows = "".join(f"{i},a,c{i}\n" for i in range(MAX_CLASSES + 1))
    return table(folder, "task,worker,label\n" + rows)


def many_annotators(folder: Path) -> Path:
    return mapping(folder, "".join(f"w{i}: {{a: x}}\n" for i in range(MAX_ANNOTATORS + 1)))


# case: (build the files and return the config, words that stderr must hold: the file first)
CASES: dict[str, tuple[Callable[[Path], Path], list[str]]] = {
    # readers keep what the file says
    "duplicate annotator in YAML": (lambda d: mapping(d, "w1: {a: x, b: y}\nw2: {a: x}\nw1: {c: x}\n"),
                                    ["labels.yaml", "duplicate key", "'w1'", "line 3", "line 1"]),
    "duplicate item in JSON": (lambda d: mapping(d, '{"w1": {"a": "x",\n "a": "y"}}', "labels.json"),
                               ["labels.json", "field 'w1'", "duplicate key", "'a'", "line 2"]),
    "duplicate gold item": (lambda d: (d / "gold.yaml").write_text("a: x\na: y\n") and mapping(d, LABELS, gold="gold.yaml"),
                            ["gold.yaml", "'a'", "duplicate key", "line 2"]),
    "duplicate key in a track": (lambda d: track(d, '{"x": 1,\n"x": 2}'), ["s1.json", "track", "duplicate key", "'x'"]),
    "JSON true and 1 in a mapping": (lambda d: mapping(d, '{"w1": {"a": true, "b": 1}}', "labels.json"),
                                     ["labels.json", "'label'", "'true'", "'1'", "ambiguous"]),
    "JSON true and 1 in a track": (lambda d: track(d, "[1, true, 0]"), ["s1.json", "'label'", "ambiguous"]),
    "true and 1 in a table": (lambda d: table(d, "task,worker,label\n0,a,true\n1,a,1\n"),
                              ["labels.csv", "'label'", "ambiguous"]),
    "a list as a label": (lambda d: mapping(d, "w1: {a: [x, y]}\n"), ["labels.yaml", "'w1'", "single value"]),
    "an empty key": (lambda d: mapping(d, "w1: {'': x}\n"), ["labels.yaml", "'w1'", "non-empty text"]),
    # configs
    "config alias": (lambda d: config(d, "{kind: demo}", "classes: &c [a, b]\nannotators: *c\n"),
                     ["bad.yaml", "'annotators'", "aliases are not allowed", "*c"]),
    "config alias bomb": (alias_bomb, ["bad.yaml", "field 'b'", "aliases are not allowed", "line 4"]),
    "config duplicate key": (lambda d: config(d, "{kind: demo}", "replace: true\nreplace: false\n"),
                             ["bad.yaml", "duplicate key", "'replace'", "line 4"]),
    "config YAML tag": (lambda d: config(d, "{kind: demo}", "replace: !!python/object:os.system ls\n"),
                        ["bad.yaml", "'replace'", "tags are not allowed"]),
    "UTF-16 config": (utf16, ["bad.yaml", "utf-16"]),
    "config not UTF-8": (lambda d: (d / "bad.yaml").write_bytes(b"name: t\xe9st\nsource: {kind: demo}\n") and d / "bad.yaml",
                         ["bad.yaml", "not utf-8", "byte 7"]),
    "config nested too deeply": (lambda d: config(d, "{kind: demo}", "x: " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "\n"),
                                 ["bad.yaml", "'x'", f"deeper than {MAX_DEPTH}"]),
    "seed -1": (lambda d: config(d, "{kind: demo, seed: -1}"), ["bad.yaml", "source.seed", "-1"]),
    "train seed -1": (lambda d: config(d, "{kind: demo}", "train: {seed: -1}\n"), ["bad.yaml", "train.seed", "-1"]),
    "demo of 10^12 frames": (lambda d: config(d, "{kind: demo, n_sequences: 1000000, sequence_length: 1000000}"),
                             ["bad.yaml", "'source'", "1,000,000,000,000 frames", "limit"]),
    "name with a trailing newline": (lambda d: config(d, "{kind: demo}", name='"toy\\n"'), ["bad.yaml", "'name'", "toy\\n"]),
    "classes 0, 1, 1.0": (lambda d: config(d, "{kind: demo}", "classes: [0, 1, 1.0]\n"),
                          ["bad.yaml", "'classes'", "same class", "1.0"]),
    "classes 1, true": (lambda d: config(d, "{kind: demo}", "classes: [1, true]\n"), ["bad.yaml", "'classes'", "ambiguous"]),
    "memory:// store": (lambda d: config(d, "{kind: demo}", "store: {uri_prefix: 'memory://toy'}\n"),
                        ["bad.yaml", "store.uri_prefix", "memory://", "persist"]),
    "cached store": (lambda d: config(d, "{kind: demo}", "store: {uri_prefix: 'simplecache::s3://b/p'}\n"),
                     ["bad.yaml", "store.uri_prefix", "persist"]),
    # tracebacks before
    "0-byte npy": (lambda d: features(d, lambda p: p.write_bytes(b"")), ["features.npy", "'features'", "truncated"]),
    "truncated npy": (lambda d: features(d, lambda p: (np.save(p, np.zeros((2, 5))), p.write_bytes(p.read_bytes()[:-8]))),
                      ["features.npy", "'features'", "truncated"]),
    "npy header claiming 10^12 rows": (lambda d: features(d, npy_header_only), ["features.npy", "'features'", "truncated"]),
    "npy header never closed": (lambda d: features(d, npy_unclosed_header), ["features.npy", "'features'", "header"]),
    "zero-width features": (lambda d: features(d, lambda p: np.save(p, np.zeros((2, 0), np.float32))),
                            ["features.npy", "'features'", "zero-width"]),
    "more than 32,767 classes": (many_classes, ["labels.csv", "'label'", "too many classes", "32,767"]),
    "too many annotators": (many_annotators, ["labels.yaml", "'annotator'", "too many annotators"]),
    "deeply nested JSON mapping": (lambda d: mapping(d, "[" * 100_000 + "]" * 100_000, "labels.json"),
                                   ["labels.json", "'labels'", "deeper than"]),
    "deeply nested JSON track": (lambda d: track(d, "[" * 100_000 + "]" * 100_000), ["s1.json", "'track'", "nested too deeply"]),
    "mapping not UTF-8": (lambda d: (d / "labels.yaml").write_bytes(b"w1: {a: \xff}\n")
                          and config(d, "{kind: mapping, labels: labels.yaml}"), ["labels.yaml", "'labels'", "not utf-8"]),
    "frame 10,000,000": (lambda d: table(d, "seq,frame,worker,label\ns,10000000,a,x\n", sequence_column="seq",
                                         frame_column="frame"), ["labels.csv", "'frame'", "10000000", "5,000,000"]),
    "a folder as the table": (lambda d: ((d / "dir.csv").mkdir(), config(d, "{kind: table, path: dir.csv}"))[1],
                              ["dir.csv", "'path'", "a folder", "only regular files"]),
    "a folder as the features": (lambda d: ((d / "f.npy").mkdir(), table(d, "task,worker,label\n0,a,x\n", features="f.npy"))[1],
                                 ["f.npy", "'features'", "a folder"]),
}

# cases that would block on a read: run in a child process under a timeout
HANGS: dict[str, tuple[Callable[[Path], Path], list[str]]] = {
    "FIFO as the table": (lambda d: (os.mkfifo(d / "labels.csv"), config(d, "{kind: table, path: labels.csv}"))[1],
                          ["labels.csv", "path'", "fifo"]),
    "FIFO as the config": (lambda d: (os.mkfifo(d / "bad.yaml"), d / "bad.yaml")[1], ["bad.yaml", "fifo"]),
    "FIFO as the gold file": (lambda d: (os.mkfifo(d / "gold.yaml"), mapping(d, LABELS, gold="gold.yaml"))[1],
                              ["gold.yaml", "gold'", "fifo"]),
    "/dev/zero as a track": (lambda d: track(d, link="/dev/zero"), ["s1.json", "'track'", "character device"]),
    "/dev/zero as the features": (lambda d: (os.symlink("/dev/zero", d / "features.npy"),
                                             table(d, "task,worker,label\n0,a,x\n", features="features.npy"))[1],
                                  ["features.npy", "source.features", "only regular files"]),
}


@pytest.fixture(scope="module")
def toy(prefect_harness, tmp_path_factory) -> tuple[Path, Path]:
    """One ingested mapping dataset `toy`: no bad case may change its store."""
    folder = tmp_path_factory.mktemp("toy")
    (folder / "labels.yaml").write_text(LABELS)
    good = config(folder, "{kind: mapping, labels: labels.yaml}")
    root = folder / "root"
    assert main(["ingest", str(good), "--root", str(root)]) == 0
    return root, Path(RootLayout(root).dataset_uri("toy"))


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_naming_file_and_field(toy, tmp_path, capsys, case):
    root, store = toy
    before = tree_digest(store)
    build, words = CASES[case]
    bad = build(tmp_path)
    capsys.readouterr()
    assert main(["ingest", str(bad), "--root", str(root)]) == 2
    captured = capsys.readouterr()
    check_message(captured.err.strip().splitlines()[-1], words)
    assert str(tmp_path) in captured.err  # the file is named by its full path
    assert tree_digest(store) == before
    assert sorted(p.name for p in store.parent.iterdir()) == ["toy.zarr"]


@pytest.mark.parametrize("case", list(HANGS))
def test_fifos_and_devices_are_refused_without_blocking(toy, tmp_path, case):
    from prefect.settings import PREFECT_API_URL

    root, store = toy
    before = tree_digest(store)
    build, words = HANGS[case]
    bad = build(tmp_path)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    try:
        done = subprocess.run([sys.executable, "-m", "flows.cli", "ingest", str(bad), "--root", str(root)],
                              capture_output=True, text=True, env=env, cwd=PROJECT, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{case}: the command hung (no exit within 120 s)")
    assert done.returncode == 2, done.stderr[-3000:]
    check_message(done.stderr.strip().splitlines()[-1], words)
    assert tree_digest(store) == before


def test_readers_keep_what_the_file_says(toy, tmp_path, capsys):
    """YAML 1.1 would rename annotator `no` to False and read `010` as 8 and `1:30` as 90: here they
    stay text, in the store too."""
    from storage.dataset_store import DatasetStore

    (tmp_path / "labels.yaml").write_text("no: {010: 1:30, '7': yes}\nyes: {010: 1:30}\n")
    good = config(tmp_path, "{kind: mapping, labels: labels.yaml}", name="text")
    root = toy[0]
    capsys.readouterr()
    assert main(["ingest", str(good), "--root", str(root), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["classes"] == ["1:30", "yes"]
    store = DatasetStore.open(RootLayout(root).dataset_uri("text"))
    assert store.annotators == ["no", "yes"]
    assert store.read_labels().tolist() == [[0, 0], [1, -1]]
