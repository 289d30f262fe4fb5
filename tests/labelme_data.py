"""LabelMe-1k (../shared/datasets/labelme_amt) as a `Batch` with the published split, built
straight from the shared files for the training tests and benchmarks (the `wide` reader and
`configs/labelme.yaml` ingest the same files for users)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from configs.splits import SPLIT_CODES
from storage.batch import Batch

LABELME = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "labelme_amt"
if not LABELME.is_dir():  # a worktree beside main: ../shared is one level further up
    LABELME = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "labelme_amt"
SPLITS = ("train", "valid", "test")


def labelme_arrays(folder: Path = LABELME) -> dict[str, np.ndarray]:
    """Features, crowd labels (-1 = none), gold and split codes of the 2,688 images."""
    feats = [np.load(folder / f"LabelMe_VGG_avg_{s}.npy").astype(np.float32) for s in SPLITS]
    gold = [np.loadtxt(folder / f"LabelMe_Z_{s}.txt", dtype=np.int64) for s in SPLITS]
    answers = np.loadtxt(folder / "answers.txt", dtype=np.int64)
    n = [len(f) for f in feats]
    labels = np.full((sum(n), answers.shape[1]), -1, np.int16)
    labels[: n[0]] = answers
    split = np.concatenate([np.full(k, SPLIT_CODES[s], np.int8) for k, s in zip(n, SPLITS, strict=True)])
    return {"features": np.concatenate(feats), "labels": labels, "gold": np.concatenate(gold).astype(np.int16),
            "split": split}


def labelme_batch(folder: Path = LABELME, gold: np.ndarray | None = None) -> Batch:
    """The batch (items `train/0`, ..., `test/1187`); `gold` replaces the gold labels when given."""
    a = labelme_arrays(folder)
    names = [f"{s}/{i}" for s in SPLITS for i in range(int((a["split"] == SPLIT_CODES[s]).sum()))]
    return Batch(sequence_names=names, sequence_lengths=np.ones(len(names), np.int64),
                 annotators=[f"w{j}" for j in range(a["labels"].shape[1])], classes=[str(c) for c in range(8)],
                 labels=a["labels"], gold=a["gold"] if gold is None else gold, features=a["features"],
                 item_names=names, split=a["split"], sources={"labels": str(folder / "answers.txt")})
