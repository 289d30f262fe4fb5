"""Source configs and the reader registry: which formats a dataset's labels may come in.

A reader is one config model here (a `SourceConfig` subclass with its own `kind`), one function in
`tasks/readers/` and one `READERS.register(ReaderEntry(...))` line. The config schema takes its
allowed `source.kind` values from `READERS`, `tasks.readers.read_source` calls the registered
function, and the batch helpers (`configs.schema.config_for_batch`, the watcher) read the entry's
`suffixes`, `batch_field` and `folder_batch`, so nothing else has to learn about a new format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from configs.base import Strict, resolve_path
from configs.inputs import MAX_FRAMES, MAX_SEED, MAX_SEQUENCE_FRAMES
from configs.registry import Entry, Registry


def _exists(path: Path) -> Path:
    if not path.exists():
        raise ValueError(f"file not found: {path}")
    if not (path.is_file() or path.is_dir()):  # a FIFO or a device would block or never end
        raise ValueError(f"not a regular file or folder (a FIFO, device or socket): {path}; only regular files are read")
    return path.resolve()


InputPath = Annotated[Path, BeforeValidator(resolve_path), AfterValidator(_exists)]
"""A path that must exist, relative to the config file's folder."""


class SourceConfig(Strict):
    """The base of every source section: `kind` names its registered reader."""

    kind: str

    def input_paths(self) -> list[Path]:
        """Every file or folder this source names (its Path and list-of-Path fields that are set)."""
        found: list[Path] = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            values = value if isinstance(value, list) else [value]
            found += [v for v in values if isinstance(v, Path)]
        return found


SplitName = Literal["train", "valid", "test"]
"""A split as a config names it (`configs.splits.SPLIT_CODES`)."""


class TableSource(SourceConfig):
    """A long table, one row per (item, annotator, label); the crowd-kit column names by default.

    With `sequence_column` and `frame_column`, items are frames of sequences. Gold comes from
    `gold_column` (on the label rows) and/or a `gold` file keyed by item (CSV/TSV/Parquet with
    `gold_item_column` and `gold_label_column`), whose items need no label row (validation and
    test items). `split_column` gives each item's split (train / valid / test), in the label
    table, the gold file or both. Rows whose annotator and label are empty contribute gold only
    (the older way to add items without labels; they need a split once the data has splits).
    """

    kind: Literal["table"]
    path: InputPath
    format: Literal["csv", "tsv", "parquet"] | None = None
    item_column: str = "task"
    annotator_column: str = "worker"
    label_column: str = "label"
    gold_column: str | None = None
    sequence_column: str | None = None
    frame_column: str | None = None
    features: InputPath | None = Field(
        None, description=".npy whose row i is item id i, or .csv/.parquet keyed by item id"
    )
    features_item_column: str | None = None
    gold: InputPath | None = Field(None, description="a table of gold labels keyed by item: CSV, TSV or Parquet")
    gold_item_column: str | None = Field(None, description="the gold file's item column (default: item_column)")
    gold_label_column: str = "gold"
    split_column: str | None = Field(
        None, description="a column naming each item's split (train/valid/test, empty = none), in the "
                          "label table, the gold file or both")


class WidePart(Strict):
    """One file set of a wide source, usually one split: row i of each file is item i of the part.

    A part needs at least one of labels, features and gold (they fix its rows); a part without
    labels (e.g. LabelMe's validation and test images) has items with no crowd label.
    """

    split: SplitName | None = None
    labels: InputPath | None = Field(None, description="the label matrix: one row per item, one column per annotator")
    features: InputPath | None = Field(None, description=".npy, row i is item i of the part")
    gold: InputPath | None = Field(None, description="one gold value per line (text), or a 1-d .npy")
    items: InputPath | None = Field(None, description="one item name per line (default: <split>/<row>)")

    @model_validator(mode="after")
    def _has_rows(self) -> WidePart:
        if self.labels is None and self.features is None and self.gold is None:
            raise ValueError("a part needs labels, features or gold")
        return self


class WideSource(SourceConfig):
    """A wide label matrix: items x annotators, one row per item, a missing-value code.

    LabelMe / PyLearningCrowds' `answers.txt` (space separated, -1 = not labelled) and
    cleanlab's `labels_multiannotator` saved as CSV (a header of annotator names, empty =
    not labelled). Either one `parts` entry per split (each with its labels, features, gold and
    item names), or the files at the top level (one part) with `split_column` /
    `gold_column` / `item_column` naming columns of the matrix (these need `header: true`).
    """

    kind: Literal["wide"]
    parts: list[WidePart] = Field(default_factory=list)
    labels: InputPath | None = None
    features: InputPath | None = None
    gold: InputPath | None = None
    items: InputPath | None = None
    split: SplitName | None = None
    missing: int | str = Field(-1, description="the label matrix's code for `not labelled` (an empty cell is too)")
    separator: Literal["whitespace", "comma", "tab", "semicolon"] | None = Field(
        None, description="default: comma for .csv, tab for .tsv/.tab, else whitespace")
    header: bool = Field(False, description="the first row names the columns (annotators and the columns below)")
    item_column: str | None = None
    gold_column: str | None = None
    split_column: str | None = None

    @model_validator(mode="after")
    def _one_layout(self) -> WideSource:
        top = [n for n in ("labels", "features", "gold", "items", "split") if getattr(self, n) is not None]
        if self.parts and top:
            raise ValueError(f"give the files either in `parts` or at the top level, not both (found {top[0]})")
        if not self.parts and not any(getattr(self, n) is not None for n in ("labels", "features", "gold")):
            raise ValueError("need `parts`, or `labels` (or features / gold) at the top level")
        columns = [n for n in ("item_column", "gold_column", "split_column") if getattr(self, n) is not None]
        if columns and not self.header:
            raise ValueError(f"{columns[0]} names a column of the label matrix, so it needs `header: true`")
        if self.split_column is not None and any(p.split is not None for p in self.all_parts()):
            raise ValueError("split_column and a part's `split` both give splits: use one")
        return self

    def all_parts(self) -> list[WidePart]:
        """The parts, or the top-level files as one part."""
        if self.parts:
            return list(self.parts)
        return [WidePart(split=self.split, labels=self.labels, features=self.features, gold=self.gold,
                         items=self.items)]

    def input_paths(self) -> list[Path]:
        return [p for part in self.all_parts() for p in (part.labels, part.features, part.gold, part.items)
                if p is not None]


class TracksSource(SourceConfig):
    """Per-sequence label tracks: `<annotator>/<sequence>.json`, a list of per-frame labels."""

    kind: Literal["tracks"]
    paths: list[InputPath] = Field(min_length=1)
    missing: int | str = -1


class MappingSource(SourceConfig):
    """A nested mapping `{annotator: {item: label}}` in YAML or JSON, with a gold `{item: label}`."""

    kind: Literal["mapping"]
    labels: InputPath
    gold: InputPath | None = None


DEMO_SIZES: dict[str, tuple[int, int, int, int]] = {
    "demo": (48, 1000, 8, 3),
    "large": (1000, 10_000, 6, 3),
}
"""The demo's defaults by `size`: (n_sequences, sequence_length, n_annotators, n_groups)."""


class DemoSource(SourceConfig):
    """The built-in generator of behaviour-like sequences and simulated annotators.

    Its frames (n_sequences x sequence_length, after the size's defaults) are held to the
    input limits of `configs.inputs`, before anything is generated.
    """

    kind: Literal["demo"]
    size: Literal["demo", "large"] = "demo"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    n_sequences: int | None = Field(None, gt=0, le=MAX_FRAMES // 50)
    sequence_length: int | None = Field(None, ge=50, le=MAX_SEQUENCE_FRAMES)
    n_annotators: int | None = Field(None, ge=6, le=12)
    n_groups: int | None = Field(None, ge=2, le=3)

    @model_validator(mode="after")
    def _frames(self) -> DemoSource:
        n_seq, length, _, _ = DEMO_SIZES[self.size]
        frames = (self.n_sequences or n_seq) * (self.sequence_length or length)
        if frames > MAX_FRAMES:
            raise ValueError(f"n_sequences x sequence_length = {frames:,} frames; the limit is {MAX_FRAMES:,}")
        return self


@dataclass(frozen=True)
class ReaderEntry(Entry):
    """A source format: its config model, its reader (`target`) and how a new batch arrives.

    `target` is a function `read(src, classes, annotators) -> storage.batch.Batch` (classes and
    annotators: the config's fixed lists, or None). A new batch is either a YAML file with a
    `source:` section (always), or a data file with one of `suffixes` (lower case, with the dot),
    or, with `folder_batch`, a folder; its path replaces the source field `batch_field` (a list
    field gets a one-path list), and the fields in `batch_resets` go back to their defaults.
    `batch_field` None: batches come only as YAML files.
    """

    model: type[SourceConfig] = SourceConfig
    suffixes: frozenset[str] = frozenset()
    batch_field: str | None = None
    batch_resets: tuple[str, ...] = field(default=())
    folder_batch: bool = False

    def batch_source(self, source: SourceConfig, path: Path) -> dict[str, Any]:  # JSON boundary: a source section
        """The source section for a batch at `path`, in the format of `source` (whose kind this is)."""
        if self.batch_field is None:
            raise ValueError(f"a {self.name} dataset takes batches as a YAML file with a `source:` section")
        data = source.model_dump()
        data[self.batch_field] = [path] if isinstance(data[self.batch_field], list) else path
        for name in self.batch_resets:
            data[name] = type(source).model_fields[name].get_default()
        return data


READERS = Registry[ReaderEntry]("source kind")
"""Every source format, by `kind`."""

READERS.register(ReaderEntry(
    "table", "tasks.readers.table:read_table", TableSource,
    suffixes=frozenset({".csv", ".tsv", ".tab", ".parquet", ".pq"}), batch_field="path",
))
READERS.register(ReaderEntry(
    "tracks", "tasks.readers.tracks:read_tracks", TracksSource, batch_field="paths", folder_batch=True,
))
READERS.register(ReaderEntry(
    "mapping", "tasks.readers.mapping:read_mapping", MappingSource,
    suffixes=frozenset({".yaml", ".yml", ".json"}), batch_field="labels", batch_resets=("gold",),
))
READERS.register(ReaderEntry("wide", "tasks.readers.wide:read_wide", WideSource))
READERS.register(ReaderEntry("demo", "tasks.demo:read_demo", DemoSource))


class BorisSource(SourceConfig):
    """BORIS's aggregated events export (TSV or CSV): per-frame tracks per observer and sequence.

    A sequence is a media file (its base name, from `Media file name`, `Media file` or `Source`,
    or `sequence_column`), per subject when the events name more than one. Frame f covers
    [f/fps, (f+1)/fps): a STATE event [start, stop) labels the frames whose start time lies in it,
    a POINT event the frame its time falls in (over any STATE there); other frames get
    `background`. Times within `time_precision` of a frame boundary count as on it (BORIS writes
    milliseconds). The rules in full: `tasks/readers/boris.py` and the README.
    """

    kind: Literal["boris"]
    paths: list[InputPath] = Field(min_length=1, description="aggregated events exports, .tsv or .csv")
    format: Literal["csv", "tsv"] | None = Field(None, description="default: from each file's suffix")
    observer_column: str | None = Field(
        None, description="the column naming each row's observer (e.g. an independent variable `Observer`, "
                          "or `Observation id`); default: each file is one observer's export, named by the "
                          "file's name without its suffix")
    sequence_column: str | None = Field(
        None, description="the column naming the sequence; default: the media file's base name")
    subject_column: str | None = Field("Subject", description="tracks per subject when it names several; null: ignore")
    frame_rate: float | None = Field(
        None, gt=0, le=1e6, description="frames per second where the file gives none (live observations, "
                                        "exports without an FPS column); the file's FPS wins")
    background: str = Field("background", min_length=1, description="the class of frames no event covers")
    priority: list[str] | None = Field(
        None, description="behaviours whose events may overlap, first = wins the shared frames; "
                          "without it overlapping behaviours are an error")
    time_precision: float = Field(0.0005, ge=0, le=0.01, description="seconds: a time this close to a "
                                                                      "frame boundary counts as on it")


class FramesFile(Strict):
    """One per-frame label file: one annotator's labels of one sequence."""

    path: InputPath
    annotator: str = Field(min_length=1)
    sequence: str | None = Field(None, description="default: the file name without its suffix and a "
                                                   "trailing `_labels` (DeepEthogram's naming)")


class FramesSource(SourceConfig):
    """Per-frame wide label files (DeepEthogram, SimBA): a row per frame, a 0/1 column per behaviour.

    Each row gets the behaviour whose column holds 1, `background` when none does, no label when
    none does and a column holds -1 or nothing (DeepEthogram's "not labelled yet"). The rules in
    full: `tasks/readers/frames.py` and the README.
    """

    kind: Literal["frames"]
    files: list[FramesFile] = Field(min_length=1)
    behaviors: list[str] | None = Field(
        None, description="the behaviour columns (needed for SimBA's files, which hold feature columns too); "
                          "default: every column but the frame index and the background column")
    background: str = Field("background", min_length=1, description="the class of frames with no 1; a column "
                                                                    "of this name is read as DeepEthogram's background")
    frame_column: str | None = Field(None, description="the frame index column; default: the first column "
                                                       "when its header is empty (DeepEthogram, SimBA)")
    format: Literal["csv", "tsv"] | None = Field(None, description="default: from each file's suffix")
    priority: list[str] | None = Field(
        None, description="behaviours that may share a frame, first = wins it; without it two 1s in a "
                          "row are an error")

    def input_paths(self) -> list[Path]:
        return [Path(f.path) for f in self.files]


READERS.register(ReaderEntry(
    "boris", "tasks.readers.boris:read_boris", BorisSource,
    suffixes=frozenset({".tsv", ".tab", ".csv"}), batch_field="paths",
))
READERS.register(ReaderEntry("frames", "tasks.readers.frames:read_frames", FramesSource))
