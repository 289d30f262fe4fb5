"""Property-based fuzzing of every reader and of the config: Hypothesis writes well-formed inputs and
damaged ones (truncated, spliced with hostile tokens, duplicated lines, random bytes) and ingests
each into a fresh root next to an existing store.

Every input must end one of two ways: refused with `InputError` naming a file of the input, with
the root's bytes as they were; or accepted, with the store reading back what the reader made of
the file (and, for a well-formed input, exactly what was written). Any other exception is a
failure, and so is an input that takes longer than `LIMIT_S` (a hang). Each family runs
`EXAMPLES` inputs, so a run tries `EXAMPLES * len(FAMILIES)` (>= 300) inputs.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import tree_digest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from configs.schema import load_config
from errors import InputError
from storage.dataset_store import DatasetStore
from storage.layout import RootLayout
from tasks.ingest import ingest
from tasks.readers import read_source

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
TALLY: dict[str, dict[str, int]] = {}
"""Outcomes per family in this run: refused / accepted, well-formed / accepted, damaged."""
LIMIT_S = 20
"""Seconds one input may take (a tiny input reads in milliseconds: longer means a hang)."""

# names that YAML 1.1, JSON or a CSV reader would retype or split, next to plain ones
NAMES = st.sampled_from(["a", "b", "w1", "no", "yes", "010", "1:30", "null", "~", "1.0", "true",
                         "x y", "é", "a,b", "#c", "-", "0x1F", "1e3"])
LABELS = st.sampled_from(["cat", "dog", "0", "1", "no", "010", "1:30", "2.50", "NaN"])
HOSTILE = st.sampled_from([
    "&a", "*a", "!!python/object:os.system", "!!binary", "{", "}", "[", "]", ":", ": :", "- ",
    "\x00", "\ufeff", "\x85", "\t", "'", '"', "\\", "1e400", "-1", "99999999999999999999", "true",
    "null", "~", "%YAML 1.1", "---", "...", "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    "<<: *a", "? x", "\r", "\n\n", ",,,", '"a",', "NaN", "Infinity",
])


@dataclass
class Example:
    """One generated input: its files (name -> bytes), its config text, and when it is well-formed,
    the labels it must read back as {(annotator, item): label}."""

    files: dict[str, bytes]
    config: str
    expected: dict[tuple[str, str], str] | None = None
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------ generators
crowd = st.dictionaries(
    NAMES, st.dictionaries(NAMES, LABELS, min_size=1, max_size=4), min_size=1, max_size=4)


def _yaml_scalar(text: str) -> str:
    return json.dumps(text)  # a JSON string is a YAML double-quoted scalar


def mapping_yaml(labels: dict[str, dict[str, str]]) -> str:
    return "".join(f"{_yaml_scalar(a)}: {{{', '.join(f'{_yaml_scalar(i)}: {_yaml_scalar(v)}' for i, v in items.items())}}}\n"
                   for a, items in labels.items())


def expected_of(labels: dict[str, dict[str, str]]) -> dict[tuple[str, str], str]:
    return {(a, i): v for a, items in labels.items() for i, v in items.items()}


@st.composite
def damaged(draw: st.DrawFn, text: bytes) -> tuple[bytes, str]:
    """`text` damaged one of several ways, or left whole."""
    how = draw(st.sampled_from(["whole", "truncate", "splice", "duplicate line", "bytes", "empty"]))
    if how == "whole" or not text:
        return text, "whole"
    if how == "truncate":
        return text[: draw(st.integers(0, len(text) - 1))], how
    if how == "splice":
        at = draw(st.integers(0, len(text)))
        token = draw(HOSTILE).encode("utf-8")
        return text[:at] + token + text[at:], how
    if how == "duplicate line":
        lines = text.splitlines(keepends=True)
        k = draw(st.integers(0, len(lines) - 1))
        return b"".join(lines[: k + 1] + [lines[k]] + lines[k + 1:]), how
    if how == "bytes":
        return draw(st.binary(max_size=200)), how
    return b"", how


@st.composite
def mapping_examples(draw: st.DrawFn, suffix: str) -> Example:
    labels = draw(crowd)
    text = (json.dumps(labels) if suffix == "json" else mapping_yaml(labels)).encode()
    data, how = draw(damaged(text))
    return Example({f"labels.{suffix}": data}, f"source: {{kind: mapping, labels: labels.{suffix}}}\n",
                   expected_of(labels) if how == "whole" else None, [how])


@st.composite
def table_examples(draw: st.DrawFn) -> Example:
    labels = draw(crowd)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["task", "worker", "label"])
    for a, items in labels.items():
        for i, v in items.items():
            writer.writerow([i, a, v])
    data, how = draw(damaged(out.getvalue().encode()))
    return Example({"labels.csv": data}, "source: {kind: table, path: labels.csv}\n",
                   expected_of(labels) if how == "whole" else None, [how])


@st.composite
def track_examples(draw: st.DrawFn) -> Example:
    n_annotators = draw(st.integers(1, 3))
    lengths = draw(st.lists(st.integers(1, 6), min_size=1, max_size=3))
    files: dict[str, bytes] = {}
    expected: dict[tuple[str, str], str] = {}
    damage = draw(st.integers(-1, n_annotators * len(lengths) - 1))  # which track is damaged (-1: none)
    how = "whole"
    k = 0
    for a in range(n_annotators):
        for s, n in enumerate(lengths):
            track = draw(st.lists(st.integers(-1, 3), min_size=n, max_size=n))
            data = json.dumps(track).encode()
            if k == damage:
                data, how = draw(damaged(data))
            files[f"tracks/w{a}/s{s}.json"] = data
            expected |= {(f"w{a}", f"s{s}:{f}"): str(v) for f, v in enumerate(track) if v != -1}
            k += 1
    return Example(files, "source: {kind: tracks, paths: [tracks]}\n", expected if how == "whole" else None, [how])


@st.composite
def feature_examples(draw: st.DrawFn) -> Example:
    n = draw(st.integers(1, 5))
    width = draw(st.integers(1, 4))
    rows = draw(st.lists(st.floats(-1e6, 1e6, width=32), min_size=n * width, max_size=n * width))
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(rows, np.float32).reshape(n, width), allow_pickle=False)
    data, how = draw(damaged(buffer.getvalue()))
    table = "task,worker,label\n" + "".join(f"{i},w{i % 2},{'ab'[i % 2]}\n" for i in range(n))
    expected = {(f"w{i % 2}", str(i)): "ab"[i % 2] for i in range(n)}
    return Example({"labels.csv": table.encode(), "features.npy": data},
                   "source: {kind: table, path: labels.csv, features: features.npy}\n",
                   expected if how == "whole" else None, [how])


@st.composite
def config_examples(draw: st.DrawFn) -> Example:
    text = (b"source: {kind: mapping, labels: labels.yaml}\nclasses: [x, y]\n"
            b"store: {chunk_frames: 64}\ntrain: {seed: 3, optim: {max_epochs: 2}}\n")
    data, how = draw(damaged(text))
    labels = {"w1": {"a": "x", "b": "y"}, "w2": {"a": "x"}}
    return Example({"labels.yaml": mapping_yaml(labels).encode()}, data.decode("utf-8", "replace"),
                   expected_of(labels) if how == "whole" else None, [how])


FAMILIES: dict[str, st.SearchStrategy[Example]] = {
    "mapping yaml": mapping_examples("yaml"),
    "mapping json": mapping_examples("json"),
    "table csv": table_examples(),
    "tracks": track_examples(),
    "features npy": feature_examples(),
    "config": config_examples(),
}


# ------------------------------------------------------------------------------ the property
@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A root holding one ingested dataset (`other`) that no fuzzed input may change."""
    folder = tmp_path_factory.mktemp("template")
    (folder / "labels.yaml").write_text("w1: {a: x, b: y}\nw2: {a: x}\n")
    (folder / "other.yaml").write_text("name: other\nsource: {kind: mapping, labels: labels.yaml}\n")
    root = folder / "root"
    ingest(load_config(folder / "other.yaml"), RootLayout(root))
    return root


@contextmanager
def time_limit(seconds: int, what: str) -> Iterator[None]:
    def hung(signum: int, frame: object) -> None:
        raise TimeoutError(f"{what}: no answer within {seconds} s (a hang)")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def read_back(store: DatasetStore) -> dict[tuple[str, str], str]:
    """The store's labels as {(annotator, item): class key}; items are named `name` or `seq:frame`."""
    labels = store.read_labels()
    names = store.item_names
    if names is None:
        offsets = store.offsets
        names = [f"{seq}:{f}" for s, seq in enumerate(store.sequence_names)
                 for f in range(int(offsets[s + 1] - offsets[s]))]
    rows, cols = np.nonzero(labels >= 0)
    return {(store.annotators[c], str(names[r])): store.classes[labels[r, c]] for r, c in zip(rows, cols, strict=True)}


def check(example: Example, template: Path) -> str:
    folder = Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        for name, data in example.files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        config = folder / "fuzz.yaml"
        config.write_text(f"name: fuzz\n{example.config}" if not example.config.startswith("name:") else example.config)
        root = folder / "root"
        shutil.copytree(template, root)
        before = tree_digest(root)
        layout = RootLayout(root)
        try:
            with time_limit(LIMIT_S, f"{example.notes} {sorted(example.files)}"):
                parsed = load_config(config)
                batch = read_source(parsed)
                ingest(parsed, layout)
        except InputError as err:
            assert example.expected is None, f"a well-formed input was refused: {err}"
            assert str(folder) in str(err), f"the error names no file of the input: {err}"
            assert tree_digest(root) == before, f"a refused input changed the root: {err}"
            return "refused"
        store = DatasetStore.open(layout.dataset_uri("fuzz"))
        got = read_back(store)
        assert got == {(store.annotators[c], key): value for key, c, value in _batch_labels(batch)}
        if batch.features is not None:
            np.testing.assert_array_equal(np.asarray(store.features[: store.n_frames]), batch.features)
        if example.expected is not None:
            assert got == example.expected
        assert tree_digest(root / "datasets" / "other.zarr") == {
            k.removeprefix("datasets/other.zarr/"): v for k, v in before.items() if k.startswith("datasets/other.zarr/")}
        return "accepted, well-formed" if example.expected is not None else "accepted, damaged"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _batch_labels(batch) -> Iterator[tuple[str, int, str]]:
    """What the reader made of the input, in read_back's terms."""
    names = batch.item_names
    if names is None:
        names = [f"{seq}:{f}" for seq, n in zip(batch.sequence_names, batch.sequence_lengths, strict=True) for f in range(int(n))]
    rows, cols = np.nonzero(batch.labels >= 0)
    for r, c in zip(rows, cols, strict=True):
        yield str(names[r]), int(c), batch.classes[batch.labels[r, c]]


def _run(family: str) -> Callable[[], None]:
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])
    @given(example=FAMILIES[family])
    def run(template: Path, example: Example) -> None:
        outcome = check(example, template)
        TALLY.setdefault(family, {}).setdefault(outcome, 0)
        TALLY[family][outcome] += 1

    return run


@pytest.mark.parametrize("family", list(FAMILIES))
def test_fuzzed_inputs_are_refused_cleanly_or_read_back_equal(template, family):
    _run(family)(template)
    print(f"{family}: {TALLY[family]}")


def test_a_run_tries_at_least_300_inputs():
    """The families above ran first (file order); this checks how many inputs they really tried."""
    tried = sum(sum(t.values()) for t in TALLY.values())
    print(f"fuzzed inputs: {tried} tried, {dict(TALLY)}")
    assert len(TALLY) == len(FAMILIES) and (tried >= 300 or EXAMPLES < 50)
