"""Reader for per-frame wide label files: a row per frame, a 0/1 column per behaviour.

DeepEthogram writes `<video>_labels.csv`: an unnamed frame index column, a `background` column,
then one column per behaviour, 1 = present, 0 = absent, -1 = not labelled yet. SimBA's
`targets_inserted/<video>.csv` holds the features of each frame and one 0/1 column per
classifier (so `behaviors` must name those columns). One file is one annotator's labels of one
sequence, as the config's `files` list says ({path, annotator, sequence}).

A row's label: the behaviour whose column holds 1; two 1s are an error naming the file, the line
and both columns, unless `priority` ranks them (the first listed wins); no 1 and no -1 or empty
cell among the behaviour columns: `background`; no 1 but a -1 or empty cell: not labelled. A
background column holding 1 beside a behaviour's 1 is an error. The frame index, when there is
one, must be 0, 1, 2, ...; every annotator's file of a sequence must have as many rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from configs.inputs import (
    MAX_FRAMES,
    MAX_LABEL_CELLS,
    MAX_SEQUENCE_FRAMES,
    check_classes,
    check_count,
    class_key,
)
from configs.sources import FramesFile, FramesSource
from errors import InputError
from storage.batch import MISSING, Batch
from tasks.readers.common import check_annotators, natural_sorted, plain, require_columns
from tasks.readers.table import read_frame

_UNNAMED = "Unnamed: 0"  # pandas' name for an empty first header cell


def read_frames(
    src: FramesSource,
    classes: Sequence[bool | int | str] | None = None,
    annotators: Sequence[str] | None = None,
) -> Batch:
    """Read every file's per-frame labels into one Batch (sequences and annotators sorted by name)."""
    where = ", ".join(str(f.path) for f in src.files)
    fixed = None if classes is None else [class_key(c) for c in classes]
    background = class_key(src.background)
    if fixed is not None and background not in fixed:
        raise InputError(where, "background", src.background,
                         f"the background class is not among the configured classes [{', '.join(fixed)}]")
    read = [(entry, *_read_file(entry, src, fixed, background)) for entry in src.files]

    tracks: dict[tuple[str, str], tuple[FramesFile, list[str], np.ndarray]] = {}
    lengths: dict[str, tuple[int, Path]] = {}
    for entry, sequence, names, values in read:
        path = Path(entry.path)
        key = (entry.annotator, sequence)
        if key in tracks:
            raise InputError(path, "files", entry.annotator, f"annotator {entry.annotator!r} labels sequence "
                                                             f"{sequence!r} in {tracks[key][0].path} too")
        known = lengths.setdefault(sequence, (len(values), path))
        if known[0] != len(values):
            raise InputError(path, "sequence", sequence,
                             f"{len(values)} frames here but {known[0]} in {known[1]}; every annotator's file "
                             "of a sequence must have the same number of frames")
        tracks[key] = (entry, names, values)

    seq_names = natural_sorted(lengths)
    ann_names = natural_sorted({a for a, _ in tracks})
    check_annotators(ann_names, annotators, where, "annotator")
    n_frames = sum(lengths[s][0] for s in seq_names)
    check_count(where, "frames", n_frames, MAX_FRAMES, "frames in one batch")
    check_count(where, "labels", n_frames * len(ann_names), MAX_LABEL_CELLS, "labels (frames x annotators)")

    declared = {name for _, names, _ in tracks.values() for name in names}  # every behaviour column, used or not
    class_list = fixed if fixed is not None else natural_sorted(declared)
    check_classes(class_list, where, "behaviors")
    code = {name: i for i, name in enumerate(class_list)}
    start = dict(zip(seq_names, np.cumsum([0] + [lengths[s][0] for s in seq_names[:-1]]), strict=True))
    column = {name: i for i, name in enumerate(ann_names)}
    labels = np.full((n_frames, len(ann_names)), MISSING, dtype=np.int16)
    for (annotator, sequence), (_, names, values) in tracks.items():
        first = int(start[sequence])
        remap = np.array([code[n] for n in names] + [MISSING], dtype=np.int16)
        labels[first:first + len(values), column[annotator]] = remap[values]
    return Batch(
        sequence_names=seq_names,
        sequence_lengths=np.array([lengths[s][0] for s in seq_names], dtype=np.int64),
        annotators=ann_names,
        classes=class_list,
        labels=labels,
        sources={"labels": where},
    )


def _sequence_name(entry: FramesFile) -> str:
    if entry.sequence is not None:
        return entry.sequence
    stem = Path(entry.path).stem
    return stem[: -len("_labels")] if stem.endswith("_labels") and len(stem) > len("_labels") else stem


def _read_file(entry: FramesFile, src: FramesSource, fixed: list[str] | None,
               background: str) -> tuple[str, list[str], np.ndarray]:
    """One file's sequence name, its class keys and per-frame codes into them (-1 = not labelled)."""
    path = Path(entry.path)
    table = read_frame(path, src.format, "format")
    columns = [str(c) for c in table.columns]
    if table.empty:
        raise InputError(path, None, 0, "no frames: a header but no rows")
    check_count(path, "frames", len(table), MAX_SEQUENCE_FRAMES, "frames in one sequence")
    index = src.frame_column if src.frame_column is not None else (columns[0] if columns[0] == _UNNAMED else None)
    if src.frame_column is not None:
        require_columns(path, columns, {"frame_column": src.frame_column})
    if index is not None:
        _check_index(path, index, table[index])
    bg_column = src.background if src.background in columns else None
    if src.behaviors is not None:
        behaviors = list(src.behaviors)
        require_columns(path, columns, {f"behaviors[{i}]": b for i, b in enumerate(behaviors)})
    else:
        behaviors = [c for c in columns if c not in (index, bg_column)]
        if not behaviors:
            raise InputError(path, "behaviors", None, "no behaviour column (only the frame index and background)")
    for name in behaviors:
        if class_key(name) == background:
            raise InputError(path, "behaviors", name, "a behaviour column is named like the background class: "
                                                      "set `background` to another name")
        if fixed is not None and class_key(name) not in fixed:
            raise InputError(path, "behaviors", name, f"behaviour column outside the configured classes "
                                                      f"[{', '.join(fixed)}]")
    hint = "" if src.behaviors is not None else " (set `behaviors` to the behaviour columns: SimBA files hold features too)"
    flags = np.stack([_flags(path, table[name], name, hint) for name in behaviors], axis=1)
    on = flags == 1
    keys = [class_key(b) for b in behaviors]
    chosen = np.argmax(on, axis=1)
    many = np.flatnonzero(on.sum(axis=1) > 1)
    if len(many):
        chosen = _ranked(path, src, on, keys, behaviors, many, chosen)
    if bg_column is not None:
        bg = _flags(path, table[bg_column], bg_column, "")
        clash = np.flatnonzero((bg == 1) & on.any(axis=1))
        if len(clash):
            row = int(clash[0])
            name = behaviors[int(chosen[row])]
            raise InputError(path, bg_column, 1, f"line {row + 2}: background is 1 and so is {name!r}")
    unknown = (flags == -1).any(axis=1)
    codes = chosen.astype(np.int64)
    codes[~on.any(axis=1)] = len(keys)
    codes[~on.any(axis=1) & unknown] = MISSING
    return _sequence_name(entry), keys + [background], codes


def _ranked(path: Path, src: FramesSource, on: np.ndarray, keys: list[str], behaviors: list[str],
            many: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """The label of each row with several 1s: the first of them in `priority`, else an error."""
    rank = {class_key(b): i for i, b in enumerate(src.priority or [])}
    for row in many:
        named = [k for k, hit in zip(keys, on[row], strict=True) if hit]
        if src.priority is None or any(k not in rank for k in named):
            both = [b for b, hit in zip(behaviors, on[row], strict=True) if hit]
            hint = "; list them in `priority`" if src.priority is not None else "; rank them with `priority`"
            raise InputError(path, both[0], both,
                             f"line {int(row) + 2}: 1 in the columns {both}: a frame gets one label{hint}")
        chosen[row] = keys.index(min(named, key=rank.__getitem__))
    return chosen


def _flags(path: Path, column: pd.Series, name: str, hint: str) -> np.ndarray:
    """A 0/1 column as int8 with -1 for `not labelled` (-1 or an empty cell); other values are errors."""
    number = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    empty = column.isna().to_numpy()
    bad = ~empty & ~np.isin(number, (0.0, 1.0, -1.0))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(path, name, plain(column.iloc[row]),
                         f"line {row + 2}: a behaviour column holds 1, 0 or -1 (not labelled){hint}")
    return np.where(empty, -1, np.nan_to_num(number)).astype(np.int8)


def _check_index(path: Path, name: str, column: pd.Series) -> None:
    """The frame index must be 0, 1, 2, ... (a gap or a repeat would misplace every later frame)."""
    number = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    wrong = np.flatnonzero(number != np.arange(len(number)))
    if len(wrong):
        row = int(wrong[0])
        raise InputError(path, name, plain(column.iloc[row]),
                         f"line {row + 2}: the frame index must be 0, 1, 2, ... (expected {row})")
