"""File readers: each turns one config source section into a validated `storage.batch.Batch`."""

from __future__ import annotations

from configs.schema import PipelineConfig
from errors import InputError
from storage.batch import Batch
from tasks.readers.mapping import read_mapping
from tasks.readers.table import read_table
from tasks.readers.tracks import read_tracks

__all__ = ["read_mapping", "read_source", "read_table", "read_tracks"]


def read_source(config: PipelineConfig) -> Batch:
    """Read the config's source with its fixed classes and annotators; the batch is validated."""
    src = config.source
    if src.kind == "table":
        batch = read_table(src, config.classes, config.annotators)
    elif src.kind == "tracks":
        batch = read_tracks(src, config.classes, config.annotators)
    elif src.kind == "mapping":
        batch = read_mapping(src, config.classes, config.annotators)
    elif src.kind == "demo":
        from tasks.demo import generate_batch  # written separately; imported only when asked for

        batch = generate_batch(src)
    else:  # pragma: no cover - the schema admits no other kind
        raise InputError(config.name, "source.kind", src.kind, "unknown source kind")
    batch.replace = config.replace
    batch.validate()
    return batch
