"""Ingestion throughput against a plain Zarr write of the same arrays, measured in one run.

Ours: `DatasetStore.append` of a demo batch (validation, content hash, plan, chunked writes,
manifest commit). Reference: `zarr.create_array` + one write per array of the same features,
labels and gold, with the same codec and chunks. Throughput is MB of decoded arrays per second;
the target ratio (ours / plain) is at least 0.7.

    .venv/bin/python benchmarks/ingest.py                  # 200 sequences x 10,000 frames
    .venv/bin/python benchmarks/ingest.py --sequences 1000 # the demo generator's large size
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from configs.schema import StoreConfig
from configs.sources import DemoSource
from storage.batch import MISSING
from storage.dataset_store import ANNOTATOR_CHUNK, blosc, open_or_create
from tasks.demo import generate_batch


def ours(batch, folder: Path, config: StoreConfig) -> float:
    start = time.perf_counter()
    store = open_or_create(str(folder / "ours.zarr"), config, list(batch.classes), None)
    store.append(batch, progress=False)
    return time.perf_counter() - start


def plain(batch, folder: Path, config: StoreConfig) -> float:
    codec = blosc(config.codec)
    chunk = config.chunk_frames
    start = time.perf_counter()
    group = zarr.open_group(str(folder / "plain.zarr"), mode="w", zarr_format=3)
    feats = group.create_array("features", shape=batch.features.shape, dtype="float32",
                               chunks=(chunk, *batch.features.shape[1:]), compressors=codec)
    feats[:] = batch.features
    labels = group.create_array("labels", shape=batch.labels.shape, dtype="int16",
                                chunks=(chunk, ANNOTATOR_CHUNK), fill_value=MISSING, compressors=codec)
    labels[:] = batch.labels
    gold = group.create_array("gold", shape=batch.gold.shape, dtype="int16", chunks=(chunk,),
                              fill_value=MISSING, compressors=codec)
    gold[:] = batch.gold
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=200)
    parser.add_argument("--length", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    batch = generate_batch(DemoSource(kind="demo", size="large", n_sequences=args.sequences,
                                      sequence_length=args.length))
    config = StoreConfig()
    mb = (batch.features.nbytes + batch.labels.nbytes + batch.gold.nbytes) / 1e6
    print(f"batch: {batch.n_frames:,} frames, {len(batch.annotators)} annotators, {mb:,.0f} MB decoded; "
          f"chunks of {config.chunk_frames} frames, blosc {config.codec.cname} level {config.codec.clevel}")
    times: dict[str, list[float]] = {"ours": [], "plain": []}
    for _ in range(args.repeats):
        for name, fn in (("plain", plain), ("ours", ours)):
            folder = Path(tempfile.mkdtemp(prefix="annostyle-bench-"))
            try:
                times[name].append(fn(batch, folder, config))
            finally:
                shutil.rmtree(folder)
    rates = {name: mb / statistics.median(ts) for name, ts in times.items()}
    for name, ts in times.items():
        print(f"{name:>6}: median {statistics.median(ts):6.2f} s  ({rates[name]:7.1f} MB/s)  runs {np.round(ts, 2).tolist()}")
    print(f"throughput ratio ours/plain = {rates['ours'] / rates['plain']:.2f}  (target >= 0.7)")


if __name__ == "__main__":
    main()
