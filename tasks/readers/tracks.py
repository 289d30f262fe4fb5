"""Reader for per-sequence label tracks: `<path>/<annotator>/<sequence>.json`, one list per track.

Each JSON file is a list with one label per frame, `missing` where the annotator did not label
that frame. Labels are read as written: integers and text as they are, a number with a fraction
or exponent as its text (`1.0` stays "1.0", as in every other reader), `true`/`false` apart from
1/0 (both in one set is an error, `configs.inputs.check_classes`); an object with a duplicate key
is an error naming the key and line. Only regular files are read, at most `MAX_TEXT_BYTES` each. Several paths may be given (e.g. the dreem `dodh` and `dodo` folders); a sequence
name must then belong to one path only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from configs.inputs import (
    MAX_FRAMES,
    MAX_LABEL_CELLS,
    MAX_SEQUENCE_FRAMES,
    MAX_TEXT_BYTES,
    check_count,
    read_text,
)
from configs.sources import TracksSource
from errors import InputError
from storage.batch import MISSING, Batch
from tasks.readers.common import check_annotators, encode_labels


def read_tracks(
    src: TracksSource,
    classes: Sequence[bool | int | str] | None = None,
    annotators: Sequence[str] | None = None,
) -> Batch:
    """Read every annotator's track of every sequence into one Batch (sequences sorted by name)."""
    roots = [Path(p) for p in src.paths]
    files, ann_names = _find_tracks(roots)
    check_annotators(ann_names, annotators, roots[0] if len(roots) == 1 else ", ".join(map(str, roots)), "annotator")

    seq_names = sorted(files)
    ann_index = {name: i for i, name in enumerate(ann_names)}
    tracks: list[np.ndarray] = []
    track_files: list[Path] = []
    track_columns: list[int] = []
    track_offsets: list[int] = []
    lengths = np.zeros(len(seq_names), dtype=np.int64)
    offset = 0
    for s, seq in enumerate(seq_names):
        first: Path | None = None
        for ann, path in sorted(files[seq].items()):
            values = _load_track(path)
            if first is None:
                first, lengths[s] = path, len(values)
            elif len(values) != lengths[s]:
                raise InputError(
                    path, "sequence", seq,
                    f"track has {len(values)} frames but {first} has {lengths[s]}; "
                    "all annotators' tracks of a sequence must have the same length",
                )
            tracks.append(values)
            track_files.append(path)
            track_columns.append(ann_index[ann])
            track_offsets.append(offset)
        offset += int(lengths[s])

    starts = np.cumsum([0] + [len(t) for t in tracks])
    if all(t.dtype.kind in "iu" for t in tracks):
        flat = np.concatenate(tracks)
    else:
        flat = np.concatenate([t.astype(object) for t in tracks])
    codes, class_list = encode_labels(
        flat, classes, lambda i: track_files[int(np.searchsorted(starts, i, side="right")) - 1],
        "label", missing=src.missing,
    )
    where = ", ".join(str(r) for r in roots)
    check_count(where, "frames", offset, MAX_FRAMES, "frames in one batch")
    check_count(where, "label", offset * len(ann_names), MAX_LABEL_CELLS, "labels (frames x annotators)")
    labels = np.full((offset, len(ann_names)), MISSING, dtype=np.int16)
    for k, (column, start) in enumerate(zip(track_columns, track_offsets, strict=True)):
        labels[start:start + len(tracks[k]), column] = codes[starts[k]:starts[k + 1]]
    return Batch(
        sequence_names=seq_names,
        sequence_lengths=lengths,
        annotators=ann_names,
        classes=class_list,
        labels=labels,
        sources={"labels": ", ".join(str(r) for r in roots)},
    )


def _find_tracks(roots: list[Path]) -> tuple[dict[str, dict[str, Path]], list[str]]:
    """Track files by sequence then annotator, and the sorted union of annotator folder names."""
    files: dict[str, dict[str, Path]] = {}
    owner: dict[str, Path] = {}
    annotators: set[str] = set()
    for root in roots:
        if not root.is_dir():
            raise InputError(root, "paths", str(root), "need a folder holding <annotator>/<sequence>.json")
        for folder in sorted(root.iterdir()):
            if not folder.is_dir() or folder.name.startswith("."):
                continue
            annotators.add(folder.name)
            for path in sorted(folder.glob("*.json")):
                seq = path.stem
                if owner.setdefault(seq, root) != root:
                    raise InputError(path, "sequence", seq, f"the same sequence name is also in {owner[seq]}")
                files.setdefault(seq, {})[folder.name] = path
    if not files:
        raise InputError(", ".join(map(str, roots)), "paths", None, "empty: no <annotator>/<sequence>.json files")
    return files, sorted(annotators)


def _load_track(path: Path) -> np.ndarray:
    """One track as a 1-d array (ints stay ints; text, bools or nulls make an object array)."""
    text = read_text(path, "track", MAX_TEXT_BYTES)
    try:
        data = json.loads(text, parse_float=str, object_pairs_hook=lambda pairs: _object(path, text, pairs))
    except json.JSONDecodeError as err:
        raise InputError(path, "track", None, f"not valid JSON: {err}") from err
    except RecursionError as err:
        raise InputError(path, "track", None, "not valid JSON: nested too deeply") from err
    if not isinstance(data, list):
        raise InputError(path, "track", type(data).__name__, "a track must be a JSON list of per-frame labels")
    check_count(path, "track", len(data), MAX_SEQUENCE_FRAMES, "frames in one sequence")
    kinds = {type(v) for v in data}
    if kinds <= {int}:
        try:
            return np.asarray(data, dtype=np.int64) if data else np.zeros(0, dtype=np.int64)
        except OverflowError:
            pass
    bad = kinds - {int, str, bool, type(None)}
    if bad:
        at = next(i for i, v in enumerate(data) if type(v) in bad)
        raise InputError(path, "track", data[at] if not isinstance(data[at], (list, dict)) else type(data[at]).__name__,
                         f"frame {at}: a track must be a flat list of labels")
    values = np.empty(len(data), dtype=object)
    values[:] = data
    return values


def _object(path: Path, text: str, pairs: list[tuple[str, Any]]) -> dict[str, Any]:  # JSON boundary: a JSON object
    """A JSON object, refusing a key given twice (with the line of its second appearance)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            places = [m.start() for m in re.finditer(re.escape(json.dumps(key)) + r"\s*:", text)]
            line = text.count("\n", 0, places[1]) + 1 if len(places) > 1 else None
            raise InputError(path, "track", key, f"line {line}: duplicate key" if line else "duplicate key")
        out[key] = value
    return out
