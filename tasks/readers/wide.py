"""Reader for wide label matrices: one row per item, one column per annotator, a missing-value code.

The layout of LabelMe / PyLearningCrowds' `answers.txt` (space separated ints, -1 = not labelled)
and of cleanlab's `labels_multiannotator` saved as CSV (a header of annotator names, empty = not
labelled). Features (`.npy`, row i is item i) and gold (one value per line, or a 1-d `.npy`) come
per part, and a part is usually one split; or one part holds every item and `split_column` (and
`gold_column`, `item_column`) name columns of the matrix.

Cells are read as the text they hold, as in the other readers (`configs.inputs.class_key`): `3`
is class "3", `3.0` is class "3.0". Every row must have the same number of fields (a short row is
an error, not missing labels); the sizes are checked against the input limits before parsing.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from configs.inputs import (
    MAX_ANNOTATORS,
    MAX_FRAMES,
    MAX_LABEL_CELLS,
    MAX_TABLE_BYTES,
    check_count,
    class_key,
    read_text,
)
from configs.sources import WidePart, WideSource
from configs.splits import SPLIT_CODES, UNASSIGNED, split_code
from errors import InputError
from storage.batch import Batch
from tasks.readers.common import check_annotators, encode_with_gold, npy_features, plain

_SEPARATORS = {"whitespace": None, "comma": ",", "tab": "\t", "semicolon": ";"}
_SUFFIX_SEPARATORS = {".csv": "comma", ".tsv": "tab", ".tab": "tab"}


@dataclass
class _Part:
    """One part as read: its rows' cells, names and the files they came from."""

    part: WidePart
    n: int
    cells: np.ndarray | None  # (n, n_columns) object: the annotator columns' text
    columns: list[str]  # annotator names of `cells`' columns
    gold: np.ndarray | None  # (n,) object: gold text, "" = unknown
    gold_file: str
    split: np.ndarray | None  # (n,) int8
    items: list[str] | None
    features: np.ndarray | None


def read_wide(
    src: WideSource,
    classes: Sequence[bool | int | str] | None = None,
    annotators: Sequence[str] | None = None,
) -> Batch:
    """Read a wide source (every part) into one Batch; row order is part order, then file order."""
    parts = src.all_parts()
    first = next(p for p in (parts[0].labels, parts[0].features, parts[0].gold) if p is not None)
    missing_key = _missing_key(src, classes, first)
    read = [_read_part(src, part, k, len(parts)) for k, part in enumerate(parts)]

    columns = _annotator_columns(src, read)
    check_annotators(columns, annotators, next((str(p.part.labels) for p in read if p.part.labels), first),
                     "annotator")
    n = sum(p.n for p in read)
    check_count(first, "frames", n, MAX_FRAMES, "frames in one batch")
    check_count(first, "labels", n * len(columns), MAX_LABEL_CELLS, "labels (frames x annotators)")
    cells = np.full((n, len(columns)), "", dtype=object)
    gold_text = np.full(n, "", dtype=object)
    starts = np.cumsum([0] + [p.n for p in read])
    position = {name: j for j, name in enumerate(columns)}
    for p, start in zip(read, starts[:-1], strict=False):
        if p.cells is not None:
            cells[start: start + p.n, [position[c] for c in p.columns]] = p.cells
        if p.gold is not None:
            gold_text[start: start + p.n] = p.gold
    has_gold = any(p.gold is not None for p in read)

    def label_file(flat: int) -> str:
        part = read[int(np.searchsorted(starts, flat // max(len(columns), 1), side="right")) - 1]
        return str(part.part.labels)

    def gold_file(row: int) -> str:
        return read[int(np.searchsorted(starts, row, side="right")) - 1].gold_file

    label_codes, gold_codes, class_list = encode_with_gold(
        cells.reshape(-1), gold_text if has_gold else None, classes,
        (label_file, "labels"), (gold_file, "gold"), missing=src.missing,
    )
    _check_missing_range(src, class_list, missing_key, first)
    labels = label_codes.reshape(n, len(columns)).astype(np.int16)

    items = _item_names(read)
    split = None
    if any(p.split is not None for p in read):
        split = np.concatenate([p.split if p.split is not None else np.full(p.n, UNASSIGNED, np.int8)
                                for p in read])
        _check_test_rows(read, starts, labels, columns)
    features = _features(read)
    sources: dict[str, str] = {}
    labelled = [str(p.part.labels) for p in read if p.part.labels is not None]
    sources["labels"] = labelled[0] if len(labelled) == 1 else ", ".join(labelled) or first.as_posix()
    if has_gold:
        sources["gold"] = ", ".join(dict.fromkeys(p.gold_file for p in read if p.gold is not None))
    if features is not None:
        sources["features"] = ", ".join(str(p.part.features) for p in read)
    if split is not None:
        sources["split"] = sources["labels"]  # a store-level split error is about the labels
    return Batch(
        sequence_names=list(items), sequence_lengths=np.ones(n, dtype=np.int64), annotators=columns,
        classes=class_list, labels=labels, gold=gold_codes if has_gold else None, features=features,
        item_names=items, sources=sources, split=split,
    )


def _missing_key(src: WideSource, classes: Sequence[bool | int | str] | None, file: Path) -> str:
    """The missing-value code's class key; a configured class equal to it is an error."""
    key = class_key(src.missing)
    if key == "":
        raise InputError(file, "missing", src.missing, "the missing-value code must be a value (empty cells are "
                                                       "always missing)")
    if classes is not None and key in {class_key(c) for c in classes}:
        raise InputError(file, "missing", plain(src.missing),
                         "the missing-value code is also one of the configured classes: set `missing` to a "
                         "value no class uses")
    return key


def _check_missing_range(src: WideSource, class_list: list[str], missing_key: str, file: Path) -> None:
    """With whole-number classes, a missing-value code between the smallest and largest class would
    hide a class (e.g. `missing: 3` over classes 0-7): refused."""
    try:
        numbers = [int(c) for c in class_list]
        code = int(missing_key)
    except ValueError:
        return
    if numbers and min(numbers) < code < max(numbers):
        raise InputError(file, "missing", plain(src.missing),
                         f"the missing-value code lies among the classes ({min(numbers)} to {max(numbers)}): "
                         f"it would hide a class; set `missing` to a value no class uses (e.g. -1)")


def _separator(src: WideSource, path: Path) -> str | None:
    name = src.separator or _SUFFIX_SEPARATORS.get(path.suffix.lower(), "whitespace")
    return _SEPARATORS[name]


def _read_matrix(src: WideSource, path: Path) -> tuple[list[str], np.ndarray]:
    """The matrix's column names (the header, or 0..m-1) and its cells as text, (rows, columns)."""
    text = read_text(path, "labels", MAX_TABLE_BYTES)
    sep = _separator(src, path)
    lines = text.splitlines()
    while lines and not lines[-1].strip():  # trailing blank lines; a blank line inside is a short row
        lines.pop()
    if not lines:
        raise InputError(path, "labels", 0, "empty label matrix: no rows")
    widths = _field_counts(lines, sep)
    check_count(path, "annotator", int(widths.max()), MAX_ANNOTATORS + 3, "columns")
    check_count(path, "frames", len(lines), MAX_FRAMES, "rows")
    check_count(path, "labels", len(lines) * int(widths.max()), MAX_LABEL_CELLS, "cells (rows x columns)")
    uneven = np.flatnonzero(widths != widths[0])
    if len(uneven):
        row = int(uneven[0])
        raise InputError(path, "labels", int(widths[row]),
                         f"line {row + 1} has {widths[row]} fields, line 1 has {widths[0]}: every row needs one "
                         "field per column")
    body = "\n".join(lines)
    try:
        frame = pd.read_csv(io.StringIO(body), sep=r"\s+" if sep is None else sep, header=None, dtype=str,
                            keep_default_na=False, na_filter=False, engine="c")
    except (ValueError, pd.errors.ParserError) as err:
        raise InputError(path, "labels", None, f"cannot read the label matrix: {' '.join(str(err).split())}") from err
    values = frame.to_numpy(dtype=object)
    if src.header:
        names = [str(v).strip() for v in values[0]]
        values = values[1:]
        blank = [j for j, name in enumerate(names) if not name]
        if blank:
            raise InputError(path, "header", "", f"column {blank[0] + 1} of the header has no name")
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise InputError(path, "header", name, "column name appears twice in the header")
            seen.add(name)
    else:
        names = [str(j) for j in range(values.shape[1])]
    return names, values  # cells keep their spaces: class keys, split values and item names are stripped


def _field_counts(lines: list[str], sep: str | None) -> np.ndarray:
    """Fields per line: whitespace-separated tokens, or separators + 1 (quotes respected when any)."""
    if sep is None:
        return np.fromiter((len(line.split()) for line in lines), dtype=np.int64, count=len(lines))
    if any('"' in line for line in lines):
        return np.fromiter((len(row) for row in csv.reader(lines, delimiter=sep)), dtype=np.int64, count=len(lines))
    return np.fromiter((line.count(sep) + 1 for line in lines), dtype=np.int64, count=len(lines))


def _read_lines(path: Path, field: str) -> np.ndarray:
    """A file of one value per line (blank lines inside count, a final newline does not), as text."""
    text = read_text(path, field, MAX_TABLE_BYTES)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    check_count(path, field, len(lines), MAX_FRAMES, "lines")
    return np.asarray([line.strip() for line in lines], dtype=object)


def _read_gold(path: Path) -> np.ndarray:
    """Gold values as text: a 1-d .npy of whole numbers, or one value per line."""
    if path.suffix.lower() != ".npy":
        return _read_lines(path, "gold")
    values = npy_features(path, "gold")
    if values.ndim != 1:
        raise InputError(path, "gold", list(values.shape), "a gold .npy must be 1-d: one value per item")
    if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
        bad = values[~(np.isfinite(values) & (values == np.round(values)))][0]
        raise InputError(path, "gold", float(bad), "a gold .npy must hold whole numbers (class codes)")
    return np.asarray([str(int(v)) for v in values], dtype=object)


def _read_part(src: WideSource, part: WidePart, k: int, n_parts: int) -> _Part:
    """Read one part's files and check that their row counts agree."""
    counts: list[tuple[Path, str, int]] = []
    cells = None
    columns: list[str] = []
    gold = None
    gold_file = ""
    split = None
    items = None
    if part.labels is not None:
        path = Path(part.labels)
        names, values = _read_matrix(src, path)
        keep = np.ones(len(names), dtype=bool)
        special = {"item_column": src.item_column, "gold_column": src.gold_column, "split_column": src.split_column}
        for key, column in special.items():
            if column is None:
                continue
            if column not in names:
                raise InputError(path, key, column, f"column not found in the header; columns found: "
                                                    f"[{', '.join(names[:20])}{', ...' if len(names) > 20 else ''}]")
            j = names.index(column)
            keep[j] = False
            if key == "item_column":
                items = [str(v).strip() for v in values[:, j]]
                empty = [i for i, v in enumerate(items) if not v]
                if empty:
                    raise InputError(path, column, "", f"row {empty[0] + 1} has no item name")
            elif key == "gold_column":
                gold, gold_file = values[:, j], str(path)
            else:
                split = _split_codes(path, column, values[:, j])
        cells, columns = values[:, keep], [n for n, ok in zip(names, keep, strict=True) if ok]
        counts.append((path, "labels", len(values)))
    if part.gold is not None:
        if gold is not None:
            raise InputError(part.gold, "gold", str(part.gold), "gold given twice: as gold_column and as a gold file")
        gold, gold_file = _read_gold(Path(part.gold)), str(part.gold)
        counts.append((Path(part.gold), "gold", len(gold)))
    features = None
    if part.features is not None:
        features = npy_features(Path(part.features), "features")
        counts.append((Path(part.features), "features", len(features)))
    if part.items is not None:
        if items is not None:
            raise InputError(part.items, "items", str(part.items), "item names given twice: as item_column and a file")
        items = [str(v) for v in _read_lines(Path(part.items), "items")]
        counts.append((Path(part.items), "items", len(items)))
    ref_path, ref_field, n = counts[0]
    for path, field, count in counts[1:]:
        if count != n:
            raise InputError(path, field, count, f"{count} rows, but {ref_field} ({ref_path}) has {n}: every file of "
                                                 "a part needs one row per item, in the same order")
    if part.split is not None:
        split = np.full(n, SPLIT_CODES[part.split], np.int8)
    if items is None:
        prefix = f"{part.split or f'part{k}'}/" if n_parts > 1 else ""
        items = [f"{prefix}{i}" for i in range(n)]
    return _Part(part, n, cells, columns, gold, gold_file, split, items, features)


def _split_codes(path: Path, column: str, values: np.ndarray) -> np.ndarray:
    codes = np.empty(len(values), np.int8)
    lookup: dict[str, int] = {}
    for i, value in enumerate(values):
        code = lookup.get(value)
        if code is None:
            found = split_code(value)
            if found is None:
                raise InputError(path, column, plain(value), f"row {i + 1}: unknown split; use train, valid or "
                                                             "test (or leave it empty)")
            code = lookup[value] = found
        codes[i] = code
    return codes


def _annotator_columns(src: WideSource, read: list[_Part]) -> list[str]:
    """The annotators: the union of the parts' columns (by header name, or by position)."""
    with_labels = [p for p in read if p.cells is not None]
    if not with_labels:
        return []
    if not src.header:
        width = len(with_labels[0].columns)
        for p in with_labels[1:]:
            if len(p.columns) != width:
                raise InputError(p.part.labels, "labels", len(p.columns),
                                 f"{len(p.columns)} annotator columns, but {with_labels[0].part.labels} has {width}: "
                                 "without a header, columns are annotators by position")
        return list(with_labels[0].columns)
    return list(dict.fromkeys(c for p in with_labels for c in p.columns))


def _item_names(read: list[_Part]) -> list[str]:
    return [name for p in read for name in (p.items or [])]


def _features(read: list[_Part]) -> np.ndarray | None:
    have = [p for p in read if p.features is not None]
    if not have:
        return None
    if len(have) != len(read):
        lacking = next(p for p in read if p.features is None)
        where = next(f for f in (lacking.part.labels, lacking.part.gold) if f is not None)
        raise InputError(where, "features", None, "this part has no features but another part has: give every "
                                                  "part its features (or none)")
    arrays = [p.features for p in have if p.features is not None]
    shape = arrays[0].shape[1:]
    for p, array in zip(have[1:], arrays[1:], strict=True):
        if array.shape[1:] != shape:
            raise InputError(p.part.features, "features", list(array.shape[1:]),
                             f"feature shape differs from {have[0].part.features}'s {list(shape)}")
    return np.concatenate(arrays)


def _check_test_rows(read: list[_Part], starts: np.ndarray, labels: np.ndarray, columns: list[str]) -> None:
    """A test item must have no crowd label: named by the labels file, its row and the annotator."""
    for p, start in zip(read, starts[:-1], strict=False):
        if p.split is None or p.part.labels is None:
            continue
        rows = labels[start: start + p.n]
        bad = (p.split == SPLIT_CODES["test"]) & (rows >= 0).any(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            who = columns[int(np.flatnonzero(rows[i] >= 0)[0])]
            raise InputError(p.part.labels, "split", "test",
                             f"row {i + 1} (item {p.items[i] if p.items else i!r}) is a test item but has a crowd "
                             f"label (annotator {who!r}; {int(bad.sum())} test rows have labels): test items carry "
                             "no crowd label; use valid for items with gold and crowd labels")
