"""Ingest: read a config's source into a batch and append it to the dataset store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from configs.schema import PipelineConfig
from errors import InputError
from flows.retry import retry_unless_bad_input
from storage.batch import class_key
from storage.dataset_store import DatasetStore, dataset_uri, open_or_create
from storage.location import remove_store


def ingest(config: PipelineConfig, root: Path) -> dict[str, Any]:
    """Append the config's source to `<root>/datasets/<name>.zarr` (or under `store.uri_prefix`);
    return a JSON-able summary.

    Bad input raises InputError before the store changes; a store created by this call is
    removed again when its first batch is refused.
    """
    from tasks.readers import read_source

    batch = read_source(config)
    uri = dataset_uri(root, config.name, config.store.uri_prefix)
    created = not DatasetStore.exists(uri)
    classes = [class_key(c) for c in config.classes] if config.classes else None
    try:
        store = open_or_create(uri, config.store, classes, config.class_names)
        result = store.append(batch)
    except InputError:
        if created:
            remove_store(uri)
        raise
    decoded_mb = result.decoded_bytes / 1e6
    return {
        "dataset": config.name,
        **store.summary(),
        "annotators": store.annotators,
        "batch_status": result.status,
        "batch_index": result.batch_index,
        "batch": {
            "new_frames": result.new_frames,
            "new_sequences": result.new_sequences,
            "changed_frames": result.touched_frames,
            "labels_added": result.labels_added,
            "labels_replaced": result.labels_replaced,
            "new_annotators": result.new_annotators,
            "decoded_bytes": result.decoded_bytes,
            "stored_bytes": result.stored_bytes,
            "compression_ratio": result.decoded_bytes / result.stored_bytes if result.stored_bytes else None,
            "seconds": result.seconds,
            "mb_per_s": decoded_mb / result.seconds if result.decoded_bytes else None,
        },
    }



ingest_task = task(
    ingest, name="ingest", retries=2, retry_delay_seconds=[1, 5],
    retry_condition_fn=retry_unless_bad_input, cache_policy=NO_CACHE,
)
