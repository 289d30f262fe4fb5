"""Reprocessing a 5% batch of new frames against a full rerun on the union, measured in one run.

Both sides use the same trained model (reprocess keeps the model when the annotators are the
same), the same prediction and analysis settings, and the pure stage functions (no Prefect or
MLflow overhead on either side):
- reprocess: append the batch to the dataset store, predict only its frames, add their partial
  distance sums, cluster again;
- full rerun: ingest the union into a fresh store, predict every frame, compute every distance,
  cluster.
Item-level projections (a fixed-size sample, the same cost on both sides) are off. Target:
reprocess / full <= 0.15.

    .venv/bin/python benchmarks/reprocess.py                     # 200 sequences x 10,000 frames
    .venv/bin/python benchmarks/reprocess.py --sequences 1000    # the demo generator's large size
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from configs.schema import load_config
from storage.batch import Batch
from storage.dataset_store import DatasetStore, open_or_create
from storage.layout import RootLayout
from tasks.analyze import analyze
from tasks.demo import generate_batch
from tasks.ingest import ingest
from tasks.predict import predict
from tasks.train import train_model

PROJECT_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def split(batch: Batch, n_first: int) -> tuple[Batch, Batch]:
    """The first `n_first` sequences and the rest, as two batches."""
    cut = int(batch.sequence_lengths[:n_first].sum())
    parts = []
    for seqs, rows in ((slice(0, n_first), slice(0, cut)), (slice(n_first, None), slice(cut, None))):
        parts.append(Batch(sequence_names=batch.sequence_names[seqs], sequence_lengths=batch.sequence_lengths[seqs],
                           annotators=batch.annotators, classes=batch.classes, labels=batch.labels[rows],
                           gold=batch.gold[rows], features=batch.features[rows], sources=batch.sources,
                           meta=batch.meta if seqs.start == 0 else {}))
    return parts[0], parts[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=200)
    parser.add_argument("--length", type=int, default=10_000)
    parser.add_argument("--new", type=float, default=0.05, help="fraction of sequences in the new batch")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    overrides = {"source": {"size": "large", "n_sequences": args.sequences, "sequence_length": args.length},
                 "analyze": {"projections": False, "figures": False}}
    config = load_config(PROJECT_CONFIGS / "demo.yaml", overrides)
    union = generate_batch(config.source)
    n_new = max(1, round(args.sequences * args.new))
    old, new = split(union, args.sequences - n_new)
    print(f"union: {union.n_frames:,} frames, {len(union.annotators)} annotators; "
          f"new batch: {new.n_frames:,} frames ({new.n_frames / union.n_frames:.1%})")

    work = Path(tempfile.mkdtemp(prefix="annostyle-bench-reprocess-"))
    try:
        # one model for both sides, trained briefly on a small demo (its quality is not measured here)
        small = load_config(PROJECT_CONFIGS / "demo.yaml", {
            "source": {"size": "large", "n_sequences": 8, "sequence_length": 2000},
            "train": {"optim": {"max_epochs": 1}}})
        trained = RootLayout(work / "model")
        ingest(small, trained)
        model = train_model(small, trained).model_dir
        if model is None:
            raise SystemExit("the demo trained no model")
        model_dir = Path(model)

        # the state before the batch: the old frames ingested, predicted and analysed
        before = RootLayout(work / "reprocess")
        open_or_create(before.dataset_uri("demo"), config.store, None, None).append(old, progress=False)
        predict(config, before, model_dir=model_dir)
        analyze(config, before)

        t0 = time.perf_counter()
        DatasetStore.open(before.dataset_uri("demo"), mode="r+").append(new, progress=False)
        pred = predict(config, before, model_dir=model_dir)
        ours = analyze(config, before)
        t_reprocess = time.perf_counter() - t0

        t0 = time.perf_counter()
        full_root = RootLayout(work / "full")
        open_or_create(full_root.dataset_uri("demo"), config.store, None, None).append(union, progress=False)
        predict(config, full_root, model_dir=model_dir)
        full = analyze(config, full_root)
        t_full = time.perf_counter() - t0

        mine, theirs = np.asarray(ours.distance_matrix, float), np.asarray(full.distance_matrix, float)
        err = np.max(np.abs(mine - theirs) / np.maximum(np.abs(theirs), 1e-12))
        print(f"reprocess: {t_reprocess:7.1f} s  ({pred.frames_predicted:,} frames predicted, "
              f"{pred.frames_reused:,} reused)")
        print(f"full rerun: {t_full:7.1f} s")
        print(f"max relative difference of the distance matrices: {err:.1e}")
        print(f"wall-time ratio reprocess/full = {t_reprocess / t_full:.3f}  (target <= 0.15)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
