"""Ingest: read a config's source into a batch and append it to the dataset store."""

from __future__ import annotations

from configs.schema import PipelineConfig
from errors import InputError
from storage.batch import class_key
from storage.dataset_store import AppendResult, DatasetStore, open_or_create
from storage.layout import RootLayout
from storage.location import remove_store
from storage.results.ingest import BatchChange, IngestResult
from tasks.readers import read_source


def ingest(config: PipelineConfig, layout: RootLayout) -> IngestResult:
    """Append the config's source to its dataset store (`layout.dataset_uri`); the store's counts
    after the batch, and what the batch changed.

    Bad input raises InputError before the store changes; a store created by this call is
    removed again when its first batch is refused.
    """
    batch = read_source(config)
    uri = layout.dataset_uri(config.name)
    created = not DatasetStore.exists(uri)
    classes = [class_key(c) for c in config.classes] if config.classes else None
    try:
        store = open_or_create(uri, config.store, classes, config.class_names)
        appended = store.append(batch)
    except InputError:
        if created:
            remove_store(uri)
        raise
    return IngestResult(
        dataset=config.name, **store.summary(), annotators=store.annotators,
        batch_status=appended.status, batch_index=appended.batch_index, batch=batch_change(appended),
    )


def batch_change(appended: AppendResult) -> BatchChange:
    """What one append changed, with its compression ratio and decoding rate (None when nothing
    was written)."""
    return BatchChange(
        new_frames=appended.new_frames,
        new_sequences=appended.new_sequences,
        changed_frames=appended.touched_frames,
        labels_added=appended.labels_added,
        labels_replaced=appended.labels_replaced,
        new_annotators=appended.new_annotators,
        decoded_bytes=appended.decoded_bytes,
        stored_bytes=appended.stored_bytes,
        compression_ratio=appended.decoded_bytes / appended.stored_bytes if appended.stored_bytes else None,
        seconds=appended.seconds,
        mb_per_s=appended.decoded_bytes / 1e6 / appended.seconds if appended.decoded_bytes else None,
    )
