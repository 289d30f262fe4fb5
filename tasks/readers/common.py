"""Helpers shared by the readers: label and name encoding, annotator checks, label matrices.

Everything here is vectorised over the distinct values (pandas factorize), so the cost per cell
is a hash lookup: the dreem tracks have 430k cells.
"""

from __future__ import annotations

import tokenize
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from configs.inputs import (
    MAX_ANNOTATORS,
    MAX_FEATURES_PER_FRAME,
    MAX_FRAMES,
    MAX_LABEL_CELLS,
    MAX_TABLE_BYTES,
    check_classes,
    check_count,
    check_regular,
    check_size,
)
from errors import InputError
from storage.batch import MISSING, class_key

FileRef = str | Path | Callable[[int], str | Path]
"""A file, or a function from the position of a bad value to the file it came from."""


def plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds, so that error messages read naturally."""
    return value.item() if isinstance(value, np.generic) else value


def natural_sorted(keys: Iterable[str]) -> list[str]:
    """Sort numerically when every key is an integer ("2" before "10"), else as text."""
    try:
        return sorted(keys, key=int)
    except ValueError:
        return sorted(keys)


def _factorize(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """Codes and distinct values in first-appearance order; None/NaN get code -1.

    Python counts `True == 1`, so a hash table would merge a bool with the number it equals
    (whichever comes first would win): bools among other values are first replaced by their
    class key text ("true", "false"), which keeps them apart from 1 and 0.
    """
    array = np.asarray(values) if isinstance(values, (list, pd.Series)) else values
    if isinstance(array, np.ndarray) and array.dtype == object and len(array):
        is_bool = np.fromiter((isinstance(v, (bool, np.bool_)) for v in array), dtype=bool, count=len(array))
        if is_bool.any() and not is_bool.all():
            array = array.copy()
            array[is_bool] = ["true" if v else "false" for v in array[is_bool]]
    codes, uniques = pd.factorize(array, sort=False, use_na_sentinel=True)
    return np.asarray(codes, dtype=np.int64), np.asarray(uniques, dtype=object)


def _file_at(file: FileRef, position: int) -> str | Path:
    return file(position) if callable(file) else file


def encode_labels(
    values: Any,
    fixed_classes: Sequence[Any] | None,
    file: FileRef,
    field: str,
    missing: Any = None,
) -> tuple[np.ndarray, list[str]]:
    """Label values as int16 codes into a class list of class keys.

    None, NaN, empty text and values whose key equals `missing`'s key become -1. With
    `fixed_classes`, the classes are their keys in that order and any other value is an
    InputError; without, the classes are the sorted distinct keys (numerically when all are
    integers). `file` may be a function of the bad value's position, to name the file it came
    from.
    """
    try:
        codes, uniques = _factorize(values)
    except TypeError as err:
        raise InputError(_file_at(file, 0), field, None, f"labels must be single values: {err}") from err
    missing_key = None if missing is None else class_key(missing)
    keys: list[str | None] = []
    for position, value in enumerate(uniques):
        try:
            key = class_key(value)
        except ValueError as err:
            row = int(np.flatnonzero(codes == position)[0])
            raise InputError(_file_at(file, row), field, plain(value), "not a label value") from err
        keys.append(None if key == "" or key == missing_key else key)
    present = [k for k in keys if k is not None]
    if fixed_classes is not None:
        classes = [class_key(c) for c in fixed_classes]
        index = {c: i for i, c in enumerate(classes)}
        for position, known in enumerate(keys):
            if known is not None and known not in index:
                row = int(np.flatnonzero(codes == position)[0])
                raise InputError(
                    _file_at(file, row), field, plain(uniques[position]),
                    f"label outside the configured classes [{', '.join(classes)}]",
                )
    else:
        classes = natural_sorted(set(present))
        index = {c: i for i, c in enumerate(classes)}
    check_classes(classes, _file_at(file, 0), field)
    lookup = np.array([MISSING if k is None else index[k] for k in keys] + [MISSING], dtype=np.int16)
    return lookup[codes], classes


def encode_names(values: Any) -> tuple[np.ndarray, list[str]]:
    """Ids (items, annotators, sequences) as codes into their distinct names, first seen first.

    Names are stripped text; whole floats lose their ".0" (a CSV column of ids with a gap is read
    as floats). None, NaN and empty text get code -1.
    """
    codes, uniques = _factorize(values)
    index: dict[str, int] = {}
    lookup = [MISSING if text == "" else index.setdefault(text, len(index)) for text in map(_name, uniques)]
    return np.array(lookup + [MISSING], dtype=np.int64)[codes], list(index)


def _name(value: Any) -> str:
    value = plain(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def check_annotators(names: Sequence[str], allowed: Sequence[str] | None, file: FileRef, field: str) -> None:
    """Raise InputError for the first annotator that the config does not list (when it lists any)."""
    if allowed is None:
        return
    known = {str(a).strip() for a in allowed}
    for position, name in enumerate(names):
        if name not in known:
            listed = ", ".join(str(a) for a in allowed)
            raise InputError(
                _file_at(file, position), field, name,
                f"annotator not in the configured annotators [{listed}]",
            )


def fill_labels(
    n_frames: int,
    n_annotators: int,
    frame: np.ndarray,
    annotator: np.ndarray,
    codes: np.ndarray,
    file: str | Path,
    field: str,
    frame_names: Callable[[int], str],
    annotators: Sequence[str],
) -> np.ndarray:
    """The (frames, annotators) int16 label matrix from one (frame, annotator, code) per label.

    Repeated (frame, annotator) pairs must agree; a disagreement is an InputError naming the
    frame and annotator. The matrix's size is checked against the input limits first.
    """
    check_count(file, "frames", n_frames, MAX_FRAMES, "frames in one batch")
    check_count(file, "annotator", n_annotators, MAX_ANNOTATORS, "annotators")
    check_count(file, field, n_frames * n_annotators, MAX_LABEL_CELLS, "labels (frames x annotators)")
    labels = np.full((n_frames, n_annotators), MISSING, dtype=np.int16)
    if len(frame) == 0:
        return labels
    cell = frame.astype(np.int64) * n_annotators + annotator.astype(np.int64)
    order = np.argsort(cell, kind="stable")
    cell, sorted_codes = cell[order], codes[order]
    repeat = np.flatnonzero((cell[1:] == cell[:-1]) & (sorted_codes[1:] != sorted_codes[:-1]))
    if len(repeat):
        at = int(cell[repeat[0]])
        who = annotators[at % n_annotators]
        item = frame_names(at // n_annotators)
        raise InputError(file, field, item, f"annotator {who!r} gives item {item!r} two different labels")
    labels.reshape(-1)[cell] = sorted_codes
    return labels


def gold_per_frame(
    n_frames: int,
    frame: np.ndarray,
    codes: np.ndarray,
    file: str | Path,
    field: str,
    frame_names: Callable[[int], str],
) -> np.ndarray:
    """One gold code per frame from (frame, code) pairs; unknown is -1, disagreement an error."""
    gold = np.full(n_frames, MISSING, dtype=np.int16)
    known = codes >= 0
    frame, codes = frame[known], codes[known]
    low = np.full(n_frames, np.iinfo(np.int16).max, dtype=np.int16)
    np.minimum.at(low, frame, codes)
    np.maximum.at(gold, frame, codes)
    conflict = np.flatnonzero((gold >= 0) & (low != gold))
    if len(conflict):
        item = frame_names(int(conflict[0]))
        raise InputError(file, field, item, f"conflicting gold values for item {item!r}")
    return gold


def encode_with_gold(
    label_values: Any,
    gold_values: Any | None,
    fixed_classes: Sequence[Any] | None,
    label_at: tuple[FileRef, str],
    gold_at: tuple[FileRef, str],
    missing: Any = None,
) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Labels and gold as codes into one class list; `*_at` are the (file, field) for errors.

    Without configured classes, the class list is taken from labels and gold together, so a
    class that only gold uses still gets a code.
    """
    classes = fixed_classes
    if classes is None and gold_values is not None:
        _, label_classes = encode_labels(label_values, None, *label_at, missing=missing)
        _, gold_classes = encode_labels(gold_values, None, *gold_at, missing=missing)
        classes = natural_sorted(set(label_classes) | set(gold_classes))
    label_codes, classes_out = encode_labels(label_values, classes, *label_at, missing=missing)
    gold_codes = None
    if gold_values is not None:
        gold_codes, _ = encode_labels(gold_values, classes, *gold_at, missing=missing)
    return label_codes, gold_codes, classes_out


def sort_codes(codes: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str]]:
    """Renumber codes into `names` naturally sorted (see `natural_sorted`); -1 stays -1."""
    ordered = natural_sorted(names)
    position = {name: i for i, name in enumerate(ordered)}
    remap = np.array([position[name] for name in names] + [MISSING], dtype=np.int64)
    return remap[codes], ordered


def require_columns(file: str | Path, found: Sequence[str], wanted: dict[str, str]) -> None:
    """Raise InputError naming the config key and the column when a wanted column is absent.

    `wanted` maps config keys (e.g. "label_column") to the column names they give.
    """
    for key, name in wanted.items():
        if name not in found:
            raise InputError(
                file, key, name, f"column not found; columns found: [{', '.join(map(str, found))}]"
            )


def npy_features(path: Path, field: str) -> np.ndarray:
    """A .npy feature array (row i is item i) as float32; `field` names the config key for errors.

    The file is mapped, not read, so its header is checked against its size (a truncated file
    or a header claiming a huge shape is an error, not an allocation) before the rows are copied.
    """
    check_size(path, field, check_regular(path, field), MAX_TABLE_BYTES)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError) as err:
        # a damaged header dictionary reaches numpy's parser: ast and tokenize errors, not ValueError
        problem = " ".join(str(err).split())
        if isinstance(err, (SyntaxError, tokenize.TokenError)):
            problem = f"damaged header ({problem})"
        if isinstance(err, EOFError) or "mmap length" in problem:
            problem = "empty or truncated file (the header's shape needs more bytes than the file holds)"
        raise InputError(path, field, None, f"cannot read the .npy: {problem}") from err
    if not isinstance(array, np.ndarray):
        raise InputError(path, field, type(array).__name__, "need a .npy array (not a .npz archive)")
    if array.ndim < 1 or array.dtype.kind not in "biuf":
        raise InputError(path, field, str(array.dtype), f"need a numeric array of rows, got shape {array.shape}")
    check_count(path, field, array.shape[0], MAX_FRAMES, "feature rows")
    width = int(np.prod(array.shape[1:], dtype=np.int64))
    if width == 0:
        raise InputError(path, field, list(array.shape), "need at least one feature value per row (zero-width features)")
    check_count(path, field, width, MAX_FEATURES_PER_FRAME, "feature values per row")
    try:
        return np.array(array, dtype=np.float32)
    except MemoryError as err:
        raise InputError(path, field, list(array.shape), "too large to load into memory") from err
