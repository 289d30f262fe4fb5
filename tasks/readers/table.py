"""Reader for long tables (CSV, TSV, Parquet): one row per (item, annotator, label).

Without sequence columns every item is a one-frame sequence; with `sequence_column` and
`frame_column` the rows label frames 0..max(frame) of each sequence and frames without a row are
unlabelled. Optional features come from a `.npy` (row i is item id i) or a table keyed by item id.

A CSV/TSV is text, and its id, label and gold columns are read as the text they hold (label `010`
stays "010", `1.0` stays "1.0"); Parquet columns keep their types (see `configs.inputs.class_key`).
Only regular files are read; a `frame` must be below `MAX_SEQUENCE_FRAMES`, checked before any
frame is allocated; a `.npy` header is checked against the file's size before it is loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from configs.inputs import (
    MAX_FRAMES,
    MAX_SEQUENCE_FRAMES,
    MAX_TABLE_BYTES,
    check_count,
    open_input,
)
from configs.sources import TableSource
from configs.splits import SPLIT_NAMES, UNASSIGNED, split_code
from errors import InputError
from storage.batch import Batch
from tasks.readers.common import (
    check_annotators,
    encode_names,
    encode_with_gold,
    fill_labels,
    gold_per_frame,
    npy_features,
    plain,
    require_columns,
    sort_codes,
)

_SUFFIX_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet"}


def read_table(
    src: TableSource,
    classes: Sequence[bool | int | str] | None = None,
    annotators: Sequence[str] | None = None,
) -> Batch:
    """Read a long label table (and its optional features) into one Batch."""
    path = Path(src.path)
    sequences = _sequence_columns(src)
    wanted = {"annotator_column": src.annotator_column, "label_column": src.label_column}
    if sequences is None or "item_column" in src.model_fields_set:
        wanted["item_column"] = src.item_column
    if src.gold_column is not None:
        wanted["gold_column"] = src.gold_column
    if sequences is not None:
        wanted["sequence_column"], wanted["frame_column"] = sequences
    names = [src.annotator_column, src.item_column, src.label_column] + ([sequences[0]] if sequences else [])
    names += [src.gold_column] if src.gold_column is not None else []
    names += [src.split_column] if src.split_column is not None else []
    table = read_frame(path, src.format, "format", text_columns=names)
    require_columns(path, list(table.columns), wanted)
    if table.empty:
        raise InputError(path, None, 0, "empty table: a header but no rows")
    has_items = src.item_column in table.columns
    gold_table = _read_gold_table(src, sequences is not None and not has_items)
    _split_column_somewhere(src, table, gold_table)

    ann_codes, ann_names = encode_names(table[src.annotator_column])
    gold_values, n_column_gold = _gold_values(src, table, gold_table)
    gold_file = Path(src.gold) if src.gold is not None else path

    def gold_at(position: int) -> Path:
        return path if position < n_column_gold else gold_file

    label_codes, gold_codes, class_list = encode_with_gold(
        table[src.label_column], gold_values, classes,
        (path, src.label_column), (gold_at, str(src.gold_column or src.gold_label_column)),
    )
    _check_pairs(path, src, ann_codes, label_codes)
    ann_codes, ann_names = sort_codes(ann_codes, ann_names)
    check_annotators(ann_names, annotators, path, src.annotator_column)

    seq_names: list[str] | None
    lengths: np.ndarray | None
    item_names: list[str] | None
    if sequences is None:
        frame, item_names = encode_names(table[src.item_column])
        _no_gaps(path, src.item_column, frame)
        seq_names, lengths = None, None
    else:
        frame, seq_names, lengths, item_names = _frames_of_sequences(path, src, table, sequences, has_items)
    gold_frame = np.zeros(0, np.int64)
    if gold_table is not None and item_names is not None:
        gold_frame, item_names = _gold_frames(src, gold_table, item_names, sequences is None)

    features = None
    if src.features is not None:
        n_frames = int(lengths.sum()) if lengths is not None else len(item_names or [])
        features, extra = _read_features(Path(src.features), src, item_names, n_frames, sequences is None)
        item_names = None if item_names is None else item_names + extra
    if seq_names is None or lengths is None:  # items (set in the first branch): one-frame sequences
        seq_names = list(item_names or [])
        lengths = np.ones(len(seq_names), dtype=np.int64)
    n_frames = int(lengths.sum())
    frame_name = _frame_namer(item_names, seq_names, lengths)

    labelled = label_codes >= 0
    labels = fill_labels(
        n_frames, len(ann_names), frame[labelled], ann_codes[labelled], label_codes[labelled],
        path, src.label_column, frame_name, ann_names,
    )
    gold = None
    if gold_codes is not None:
        column_frames = frame if src.gold_column is not None else np.zeros(0, np.int64)
        gold = gold_per_frame(n_frames, np.concatenate([column_frames, gold_frame]), gold_codes, gold_file,
                              str(src.gold_column or src.gold_label_column), frame_name)
    split = None
    if src.split_column is not None or gold_table is not None:  # a gold file: gold-only items need a split
        split = _split_per_frame(src, n_frames, frame, table, gold_frame, gold_table, frame_name)

    sources = {"labels": str(path)}
    if src.gold_column is not None or src.gold is not None:
        sources["gold"] = ", ".join(dict.fromkeys(
            ([str(path)] if src.gold_column is not None else []) + ([str(src.gold)] if src.gold is not None else [])))
    if src.features is not None:
        sources["features"] = str(src.features)
    if split is not None:
        sources["split"] = str(path) if src.gold is None or (
            src.split_column is not None and src.split_column in table.columns) else str(src.gold)
    return Batch(
        sequence_names=seq_names,
        sequence_lengths=lengths,
        annotators=ann_names,
        classes=class_list,
        labels=labels,
        gold=gold,
        features=features,
        item_names=item_names,
        sources=sources,
        split=split,
    )


def _read_gold_table(src: TableSource, no_item_column: bool) -> pd.DataFrame | None:
    """The gold file (a table keyed by item), or None; its item and gold columns must be there."""
    if src.gold is None:
        return None
    path = Path(src.gold)
    if no_item_column:
        raise InputError(path, "gold", str(path), "a gold file is keyed by item: with sequences, set item_column "
                                                  "(the label table's item ids) too")
    key = src.gold_item_column or src.item_column
    names = [key, src.gold_label_column] + ([src.split_column] if src.split_column is not None else [])
    gold = read_frame(path, None, "gold", text_columns=names)
    require_columns(path, list(gold.columns), {"gold_item_column": key, "gold_label_column": src.gold_label_column})
    if gold.empty:
        raise InputError(path, "gold", 0, "empty gold file: a header but no rows")
    return gold


def _split_column_somewhere(src: TableSource, table: pd.DataFrame, gold: pd.DataFrame | None) -> None:
    if src.split_column is None or src.split_column in table.columns or (
            gold is not None and src.split_column in gold.columns):
        return
    where = f"{src.path}" + (f" or {src.gold}" if gold is not None else "")
    raise InputError(src.path, "split_column", src.split_column, f"column not found in {where}; columns found: "
                                                                 f"[{', '.join(map(str, table.columns))}]")


def _gold_values(src: TableSource, table: pd.DataFrame, gold: pd.DataFrame | None) -> tuple[np.ndarray | None, int]:
    """Gold values of the label rows (gold_column) then of the gold file's rows, and how many
    come from the label rows."""
    parts = []
    if src.gold_column is not None:
        parts.append(table[src.gold_column].to_numpy(dtype=object))
    if gold is not None:
        parts.append(gold[src.gold_label_column].to_numpy(dtype=object))
    if not parts:
        return None, 0
    return np.concatenate(parts), len(table) if src.gold_column is not None else 0


def _gold_frames(src: TableSource, gold: pd.DataFrame, item_names: list[str], items_only: bool
                 ) -> tuple[np.ndarray, list[str]]:
    """The frame of each gold-file row; items the label table does not name are added (items only)."""
    path = Path(src.gold) if src.gold is not None else Path(src.path)
    key = src.gold_item_column or src.item_column
    codes, names = encode_names(gold[key])
    _no_gaps(path, key, codes)
    index = {name: i for i, name in enumerate(item_names)}
    added = [name for name in names if name not in index]
    if added and not items_only:
        raise InputError(path, key, added[0], "with sequences, every item of the gold file must be a frame "
                                              "of the label table")
    item_names = item_names + added
    index.update({name: len(index) + i for i, name in enumerate(added)})
    lookup = np.array([index[name] for name in names], dtype=np.int64)
    return lookup[codes], item_names


def _split_per_frame(src: TableSource, n_frames: int, frame: np.ndarray, table: pd.DataFrame,
                     gold_frame: np.ndarray, gold: pd.DataFrame | None, frame_name: Callable[[int], str]) -> np.ndarray:
    """One split code per frame from the split column of the label rows and of the gold file;
    rows of one item must agree, an empty value gives none."""
    split = np.full(n_frames, UNASSIGNED, np.int8)
    column = src.split_column
    if column is None:
        return split
    sources = [(Path(src.path), table, frame)] + ([(Path(str(src.gold)), gold, gold_frame)] if gold is not None else [])
    for path, rows, frames in sources:
        if column not in rows.columns:
            continue
        values = rows[column].to_numpy(dtype=object)
        uniques, inverse = np.unique(np.asarray([str(v) if v is not None and v == v else "" for v in values]),
                                     return_inverse=True)
        codes_of: list[int] = []
        for value in uniques:
            code = split_code(value)
            if code is None:
                row = int(np.flatnonzero(inverse == len(codes_of))[0])
                raise InputError(path, column, plain(values[row]),
                                 f"row {row + 2}: unknown split; use train, valid or test (or leave it empty)")
            codes_of.append(code)
        codes = np.asarray(codes_of, np.int8)[inverse]
        given = codes >= 0
        at, codes_given = frames[given], codes[given]
        first = np.full(n_frames, UNASSIGNED, np.int8)
        first[at[::-1]] = codes_given[::-1]  # each frame's first given split (the earlier file's wins)
        ref = np.where(split >= 0, split, first)
        differs = np.flatnonzero(codes_given != ref[at])
        if len(differs):
            r = int(np.flatnonzero(given)[int(differs[0])])
            raise InputError(path, column, plain(values[r]),
                             f"row {r + 2}: {frame_name(int(frames[r]))} is given two different splits "
                             f"({SPLIT_NAMES[int(ref[frames[r]])]!r} before)")
        split = ref.astype(np.int8)
    return split


def read_frame(path: Path, fmt: str | None, key: str, text_columns: Sequence[str] = (),
               numbers: bool = False) -> pd.DataFrame:
    """Read a CSV, TSV or Parquet file into a DataFrame; `text_columns` are read as text (ids).

    The format is `fmt` or, when None, the file suffix; `key` names the config key for errors.
    Only an empty cell is missing ("NaN", "null" or "N/A" are labels or ids as written), unless
    `numbers` (a feature table), where pandas' usual NaN spellings are NaN.
    """
    fmt = fmt or _SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(path, key, path.suffix, "cannot tell the file format from its suffix; "
                                                 "use .csv, .tsv or .parquet (or set `format`)")
    try:
        with open_input(path, "path" if key == "format" else key, MAX_TABLE_BYTES) as file:
            if fmt == "parquet":
                return pd.read_parquet(file)
            return pd.read_csv(file, sep="\t" if fmt == "tsv" else ",", dtype=dict.fromkeys(text_columns, str),
                               keep_default_na=numbers, na_values=None if numbers else [""])
    except pd.errors.EmptyDataError as err:
        raise InputError(path, None, 0, "empty file: no header and no rows") from err
    except InputError:
        raise
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError, OverflowError) as err:
        raise InputError(path, key, fmt, f"cannot read the file as {fmt}: {' '.join(str(err).split())}") from err
    except Exception as err:  # pyarrow raises its own error types for a damaged Parquet file
        if type(err).__module__.startswith("pyarrow"):
            raise InputError(path, key, fmt, f"cannot read the file as {fmt}: {err}") from err
        raise


def _sequence_columns(src: TableSource) -> tuple[str, str] | None:
    if (src.sequence_column is None) != (src.frame_column is None):
        given, needed = ("sequence_column", "frame_column") if src.frame_column is None else ("frame_column", "sequence_column")
        raise InputError(src.path, needed, None, f"{given} is set, so {needed} is needed too (they go together)")
    if src.sequence_column is None or src.frame_column is None:
        return None
    return src.sequence_column, src.frame_column


def _no_gaps(path: Path, column: str, codes: np.ndarray) -> None:
    """Raise for the first row whose id is empty (rows are numbered as in a spreadsheet)."""
    if (codes < 0).any():
        row = int(np.flatnonzero(codes < 0)[0])
        raise InputError(path, column, None, f"row {row + 2} has no value in this column")


def _check_pairs(path: Path, src: TableSource, ann_codes: np.ndarray, label_codes: np.ndarray) -> None:
    """A row needs both an annotator and a label, or neither (a gold-only or unlabelled item)."""
    half = (ann_codes >= 0) != (label_codes >= 0)
    if half.any():
        row = int(np.flatnonzero(half)[0])
        column = src.label_column if ann_codes[row] >= 0 else src.annotator_column
        other = src.annotator_column if ann_codes[row] >= 0 else src.label_column
        raise InputError(path, column, None, f"row {row + 2} has a value in {other!r} but none here")


def _frames_of_sequences(
    path: Path, src: TableSource, table: pd.DataFrame, columns: tuple[str, str], has_items: bool
) -> tuple[np.ndarray, list[str], np.ndarray, list[str] | None]:
    """Frame index per row, sequence names and lengths, and item names when there is an item column."""
    seq_column, frame_column = columns
    seq_codes, seq_names = encode_names(table[seq_column])
    _no_gaps(path, seq_column, seq_codes)
    raw = table[frame_column]
    number = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(number) | (number < 0) | (number != np.round(number))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(path, frame_column, plain(raw.iloc[row]), f"row {row + 2}: a frame must be a whole number >= 0")
    too_far = number >= MAX_SEQUENCE_FRAMES
    if too_far.any():
        row = int(np.flatnonzero(too_far)[0])
        raise InputError(path, frame_column, plain(raw.iloc[row]),
                         f"row {row + 2}: a frame must be below {MAX_SEQUENCE_FRAMES:,} (the limit of frames per sequence)")
    position = number.astype(np.int64)
    lengths = np.zeros(len(seq_names), dtype=np.int64)
    np.maximum.at(lengths, seq_codes, position + 1)
    check_count(path, frame_column, int(lengths.sum()), MAX_FRAMES, "frames in one batch")
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    frame = offsets[seq_codes] + position
    if not has_items:
        return frame, seq_names, lengths, None
    item_codes, names = encode_names(table[src.item_column])
    _no_gaps(path, src.item_column, item_codes)
    per_frame = np.full(int(lengths.sum()), -1, dtype=np.int64)
    per_frame[frame] = item_codes
    clash = np.flatnonzero(per_frame[frame] != item_codes)
    if len(clash):
        row = int(clash[0])
        raise InputError(path, src.item_column, names[item_codes[row]],
                         f"row {row + 2}: frame {position[row]} of sequence {seq_names[seq_codes[row]]!r} "
                         "already has another item")
    seq_of_frame = np.repeat(np.arange(len(seq_names)), lengths)
    item_names = [
        names[code] if code >= 0 else f"{seq_names[seq_of_frame[f]]}/{f - offsets[seq_of_frame[f]]}"
        for f, code in enumerate(per_frame.tolist())
    ]
    return frame, seq_names, lengths, item_names


def _frame_namer(item_names: list[str] | None, seq_names: list[str], lengths: np.ndarray) -> Callable[[int], str]:
    """Name of frame f for error messages: its item, or sequence/position."""
    if item_names is not None:
        return lambda f: item_names[f]
    offsets = np.concatenate([[0], np.cumsum(lengths)])

    def name(f: int) -> str:
        s = int(np.searchsorted(offsets, f, side="right") - 1)
        return f"{seq_names[s]}/{f - offsets[s]}"

    return name


def _read_features(
    path: Path, src: TableSource, item_names: list[str] | None, n_frames: int, items_only: bool
) -> tuple[np.ndarray, list[str]]:
    """Feature rows in frame order, plus the ids of feature rows that no label row names.

    Such extra rows become unlabelled items (test items) when the table has no sequences;
    with sequences they have no frame to go to and are an error.
    """
    if path.suffix.lower() == ".npy":
        matrix, row_names = _npy_rows(path)
    else:
        matrix, row_names = _table_rows(path, src)
    if item_names is None:
        if not row_names and len(matrix) == n_frames:
            return matrix, []
        raise InputError(path, "features", len(matrix),
                         f"feature rows do not match the items: without an item column, the rows must be "
                         f"the {n_frames} frames in order (a .npy)")
    row_of = {name: i for i, name in enumerate(row_names or [str(i) for i in range(len(matrix))])}
    rows = [row_of.get(name, -1) for name in item_names]
    if -1 in rows:
        name = item_names[rows.index(-1)]
        hint = f"row i is item id i; the file has {len(matrix)} rows" if not row_names else "no row has this id"
        raise InputError(path, "features", name, f"feature rows do not match the items: item has no feature row ({hint})")
    used = np.zeros(len(matrix), dtype=bool)
    used[rows] = True
    extra = np.flatnonzero(~used)
    if len(extra) and not items_only:
        raise InputError(path, "features", len(extra),
                         "feature rows do not match the items: rows whose item is no frame of a sequence")
    names = row_names or [str(i) for i in range(len(matrix))]
    return matrix[np.concatenate([np.asarray(rows, dtype=np.int64), extra])], [names[i] for i in extra]


def _npy_rows(path: Path) -> tuple[np.ndarray, list[str]]:
    """A .npy feature array (row i is item id i); its row names are implied, so none are returned."""
    return npy_features(path, "features"), []


def _table_rows(path: Path, src: TableSource) -> tuple[np.ndarray, list[str]]:
    """A feature table keyed by item id: numeric columns as float32 rows, and the row ids."""
    key = src.features_item_column or src.item_column
    frame = read_frame(path, None, "features", text_columns=[key], numbers=True)
    require_columns(path, list(frame.columns), {"features_item_column": key})
    codes, names = encode_names(frame[key])
    _no_gaps(path, key, codes)
    if len(names) != len(codes):
        seen = np.zeros(len(names), dtype=bool)
        for code in codes:
            if seen[code]:
                raise InputError(path, key, names[code], "item id appears twice in the features")
            seen[code] = True
    columns = [c for c in frame.columns if c != key]
    if not columns:
        raise InputError(path, "features", key, "no feature columns besides the item id")
    for column in columns:
        if frame[column].dtype.kind not in "biuf":
            raise InputError(path, str(column), plain(frame[column].iloc[0]), "feature columns must be numeric")
    return frame[columns].to_numpy(dtype=np.float32), [names[c] for c in codes]



def write_table_batch(batch: Batch, folder: Path) -> Path:
    """Write a batch of sequences as files `read_table` reads back, plus a batch YAML naming them.

    `labels.parquet` has one row per (frame, annotator) label and one gold row per frame (which
    also keeps unlabelled frames); `features.npy` has one row per frame in frame order. Returns
    the batch YAML, the form `annostyle reprocess --batch` takes for any source kind.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lengths = np.asarray(batch.sequence_lengths)
    seq_of_frame = np.repeat(np.arange(len(lengths)), lengths)
    frame_in_seq = np.arange(batch.n_frames) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    names = np.asarray(batch.sequence_names, dtype=object)
    classes = np.asarray(batch.classes, dtype=object)
    rows, cols = np.nonzero(batch.labels >= 0)
    gold = batch.gold if batch.gold is not None else np.full(batch.n_frames, -1, np.int16)
    table = pd.concat([
        pd.DataFrame({"sequence": names[seq_of_frame[rows]], "frame": frame_in_seq[rows],
                      "worker": np.asarray(batch.annotators, dtype=object)[cols],
                      "label": classes[batch.labels[rows, cols]], "gold": None}),
        pd.DataFrame({"sequence": names[seq_of_frame], "frame": frame_in_seq, "worker": None, "label": None,
                      "gold": np.where(gold >= 0, classes[np.maximum(gold, 0)], None)}),
    ], ignore_index=True)
    table.to_parquet(folder / "labels.parquet", index=False)
    source: dict[str, object] = {"kind": "table", "path": "labels.parquet", "sequence_column": "sequence",
                                 "frame_column": "frame", "gold_column": "gold"}
    if batch.features is not None:
        np.save(folder / "features.npy", batch.features, allow_pickle=False)
        source["features"] = "features.npy"
    path = folder / "batch.yaml"
    path.write_text(yaml.safe_dump({"source": source}, sort_keys=False))
    return path
