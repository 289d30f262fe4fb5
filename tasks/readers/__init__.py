"""File readers: each turns one config source section into a validated `storage.batch.Batch`.

Which function reads which `source.kind` is registered in `configs.sources.READERS`; a reader is
`read(src, classes, annotators) -> Batch` (the config's fixed classes and annotators, or None).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from configs.schema import PipelineConfig
from configs.sources import READERS, SourceConfig
from errors import InputError
from storage.batch import Batch
from tasks.readers.boris import read_boris
from tasks.readers.frames import read_frames
from tasks.readers.mapping import read_mapping
from tasks.readers.table import read_table
from tasks.readers.tracks import read_tracks
from tasks.registry import load

__all__ = ["Reader", "read_boris", "read_frames", "read_mapping", "read_source", "read_table", "read_tracks"]

Reader = Callable[[SourceConfig, Sequence[bool | int | str] | None, Sequence[str] | None], Batch]
"""What a registered reader is (its `src` is the reader's own source model)."""


def read_source(config: PipelineConfig) -> Batch:
    """Read the config's source with its registered reader, fixed classes and annotators; the
    batch is validated."""
    read: Reader = load(READERS[config.source.kind])
    try:
        batch = read(config.source, config.classes, config.annotators)
    except (MemoryError, RecursionError) as err:  # the last guard: the limits in configs.inputs come first
        where = ", ".join(map(str, config.source.input_paths())) or config.source.kind
        raise InputError(where, "source", type(err).__name__, "the input is too large or too deeply nested to read") from err
    batch.replace = config.replace
    batch.validate()
    return batch
