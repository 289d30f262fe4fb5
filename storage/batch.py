"""A batch: what every reader returns and what the dataset store appends.

A batch holds frames grouped in sequences (an item without a sequence is a one-frame
sequence), a dense label matrix over the batch's own annotators (-1 = not labelled), and
optionally features, gold labels and item names. Labels and gold are codes into the batch's
own class list, whose entries are *class keys* (`configs.inputs.class_key`, the one rule every
reader follows); the store maps them onto its class list. `validate` also holds a batch to the
input limits of `configs.inputs` (frames, frames per sequence, annotators, classes, features).

`split` is the data's own split (`configs.splits`: train 0, valid 1, test 2, -1 = none given), one
int8 per frame; `validate` refuses a test item that carries a crowd label.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from configs.inputs import (
    MAX_ANNOTATORS,
    MAX_FEATURES_PER_FRAME,
    MAX_FRAMES,
    MAX_LABEL_CELLS,
    MAX_SEQUENCE_FRAMES,
    check_classes,
    check_count,
    class_key,
)
from configs.splits import SPLIT_CODES, SPLIT_NAMES, UNASSIGNED
from errors import InputError

__all__ = ["MISSING", "Batch", "class_key"]

MISSING = -1


@dataclass
class Batch:
    """One ingestible unit of frames, labels and (optionally) features and gold.

    Attributes:
        sequence_names: one name per sequence, in frame order.
        sequence_lengths: frames per sequence, int64.
        annotators: names of the label matrix's columns.
        classes: class keys; `labels` and `gold` hold codes into this list.
        labels: (n_frames, n_annotators) int16, -1 = not labelled.
        gold: (n_frames,) int16 with -1 = unknown, or None.
        features: (n_frames, ...) float32, or None for label-only data.
        item_names: one name per frame for item data, or None (frames are then named by
            sequence and position).
        sources: file or folder each part came from, by part ("labels", "features", "gold").
        meta: JSON-able facts kept in the manifest (for example the demo's true style groups).
        replace: whether labels may overwrite an annotator's different existing label.
        split: (n_frames,) int8 split codes (`configs.splits.SPLIT_CODES`, -1 = no split given),
            or None when the data gives no split at all.
    """

    sequence_names: list[str]
    sequence_lengths: np.ndarray
    annotators: list[str]
    classes: list[str]
    labels: np.ndarray
    gold: np.ndarray | None = None
    features: np.ndarray | None = None
    item_names: list[str] | None = None
    sources: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # JSON boundary: kept in the manifest
    replace: bool = False
    split: np.ndarray | None = None

    @property
    def n_frames(self) -> int:
        return int(self.labels.shape[0])

    @property
    def source(self) -> str:
        return self.sources.get("labels", next(iter(self.sources.values()), "<batch>"))

    def validate(self) -> None:
        """Raise InputError when the parts do not fit together or hold bad values."""
        src = self.source
        lengths = np.asarray(self.sequence_lengths, dtype=np.int64)
        self.sequence_lengths = lengths
        check_count(src, "frames", self.n_frames, MAX_FRAMES, "frames in one batch")
        check_count(src, "annotator", len(self.annotators), MAX_ANNOTATORS, "annotators")
        check_count(src, "labels", self.labels.size, MAX_LABEL_CELLS, "labels (frames x annotators)")
        if len(lengths) and int(lengths.max()) > MAX_SEQUENCE_FRAMES:
            bad = self.sequence_names[int(np.argmax(lengths))]
            raise InputError(src, "sequence", bad,
                             f"sequence has {int(lengths.max()):,} frames; the limit is {MAX_SEQUENCE_FRAMES:,}")
        check_classes(self.classes, src, "class")
        if self.labels.ndim != 2 or self.labels.shape[1] != len(self.annotators):
            raise InputError(src, "labels", self.labels.shape, "label matrix must be (frames, annotators)")
        if self.n_frames == 0 or (self.labels.size == 0 and self.gold is None):
            raise InputError(src, "labels", 0, "empty batch: no frames and no labels")
        if len(self.sequence_names) != len(lengths) or int(lengths.sum()) != self.n_frames:
            raise InputError(src, "sequences", int(lengths.sum()), f"sequence lengths do not add up to {self.n_frames} frames")
        if (lengths <= 0).any():
            bad = self.sequence_names[int(np.flatnonzero(lengths <= 0)[0])]
            raise InputError(src, "sequence", bad, "sequence has no frames")
        _unique(self.sequence_names, src, "sequence")
        _unique(self.annotators, src, "annotator")
        _unique(self.classes, src, "class")
        if self.item_names is not None:
            if len(self.item_names) != self.n_frames:
                raise InputError(src, "item", len(self.item_names), f"need one item name per frame ({self.n_frames})")
            _unique(self.item_names, src, "item")
        n_classes = len(self.classes)
        for name, codes in (("label", self.labels), ("gold", self.gold)):
            if codes is None or codes.size == 0:
                continue
            outside = (codes < MISSING) | (codes >= n_classes)
            if outside.any():
                raise InputError(src, name, int(codes[outside].flat[0]), f"code outside the {n_classes} classes")
        if self.gold is not None and self.gold.shape != (self.n_frames,):
            raise InputError(self.sources.get("gold", src), "gold", self.gold.shape, "need one gold value per frame")
        if self.split is not None:
            self._validate_split()
        if self.features is not None:
            fsrc = self.sources.get("features", src)
            width = int(np.prod(self.features.shape[1:], dtype=np.int64))
            if self.features.ndim < 1 or width == 0:
                raise InputError(fsrc, "features", list(self.features.shape),
                                 "need at least one feature value per frame (zero-width features)")
            check_count(fsrc, "features", width, MAX_FEATURES_PER_FRAME, "feature values per frame")
            if self.features.shape[0] != self.n_frames:
                raise InputError(fsrc, "features", self.features.shape[0], f"feature rows do not match the {self.n_frames} items")
            finite = np.isfinite(self.features)
            if not finite.all():
                row = int(np.argwhere(~finite)[0][0])
                what = self.item_names[row] if self.item_names else f"frame {row}"
                raise InputError(fsrc, "features", float(self.features.reshape(self.n_frames, -1)[row][~finite.reshape(self.n_frames, -1)[row]][0]), f"NaN or inf in the features of {what}")

    def _validate_split(self) -> None:
        """The split codes fit the frames, are known codes, and no test item has a crowd label."""
        ssrc = self.sources.get("split", self.source)
        split = np.asarray(self.split)
        if split.shape != (self.n_frames,):
            raise InputError(ssrc, "split", list(split.shape), f"need one split value per frame ({self.n_frames})")
        known = np.isin(split, [UNASSIGNED, *SPLIT_CODES.values()])
        if not known.all():
            raise InputError(ssrc, "split", int(split[~known][0]),
                             f"unknown split code; the codes are {SPLIT_CODES} and {UNASSIGNED} = none")
        self.split = split.astype(np.int8, copy=False)
        test = self.split == SPLIT_CODES["test"]
        if test.any() and self.labels.size:
            labelled = test & (self.labels >= 0).any(axis=1)
            if labelled.any():
                row = int(np.flatnonzero(labelled)[0])
                who = self.annotators[int(np.flatnonzero(self.labels[row] >= 0)[0])]
                raise InputError(ssrc, "split", SPLIT_NAMES[SPLIT_CODES["test"]],
                                 f"{self.frame_name(row)} is a test item but has a crowd label (annotator "
                                 f"{who!r}; {int(labelled.sum())} test items have labels): test items must "
                                 f"carry no crowd label (use valid for items with gold and crowd labels)")

    def frame_name(self, row: int) -> str:
        """Frame `row` for messages: `item 'x'`, or `sequence 's' frame f`."""
        if self.item_names is not None:
            return f"item {self.item_names[row]!r}"
        starts = np.concatenate([[0], np.cumsum(self.sequence_lengths)])
        seq = int(np.searchsorted(starts, row, side="right")) - 1
        return f"sequence {self.sequence_names[seq]!r} frame {row - int(starts[seq])}"

    def content_hash(self) -> str:
        """SHA-256 of everything the batch would write: equal hashes mean identical batches."""
        h = hashlib.sha256()
        head = {
            "sequences": self.sequence_names,
            "lengths": self.sequence_lengths.tolist(),
            "annotators": self.annotators,
            "classes": self.classes,
            "items": self.item_names,
            "replace": self.replace,
            "features": None if self.features is None else [list(self.features.shape), str(self.features.dtype)],
            "gold": self.gold is not None,
            "meta": self.meta,
        }
        if self.split is not None:  # only then, so batches without a split keep their old hash
            head["split"] = True
        h.update(json.dumps(head, sort_keys=True, default=str).encode())
        h.update(np.ascontiguousarray(self.labels, dtype=np.int16).tobytes())
        if self.gold is not None:
            h.update(np.ascontiguousarray(self.gold, dtype=np.int16).tobytes())
        if self.features is not None:
            h.update(np.ascontiguousarray(self.features, dtype=np.float32).data.cast("B"))
        if self.split is not None:
            h.update(np.ascontiguousarray(self.split, dtype=np.int8).tobytes())
        return h.hexdigest()


def _unique(names: list[str], src: str, what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InputError(src, what, name, f"duplicate {what} name")
        seen.add(name)
