"""Reader for nested mappings `{annotator: {item: label}}` in YAML or JSON, with gold `{item: label}`.

The file is read as written (`configs.inputs.parse_yaml` with `typed=False`): keys and labels are
the text the file holds (annotator `no` stays "no", item `010` stays "010"), a duplicate key is an
error naming the key and its lines, aliases are refused. Items are the labelled items in
first-seen order followed by the gold-only items.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from configs.inputs import MAX_TEXT_BYTES, load_yaml
from configs.sources import MappingSource
from errors import InputError
from storage.batch import Batch
from tasks.readers.common import check_annotators, encode_with_gold, fill_labels, sort_codes


def read_mapping(
    src: MappingSource,
    classes: Sequence[bool | int | str] | None = None,
    annotators: Sequence[str] | None = None,
) -> Batch:
    """Read a `{annotator: {item: label}}` file (and an optional gold `{item: label}`) into a Batch."""
    path = Path(src.labels)
    data = _load_mapping(path, "labels", "{annotator: {item: label}}")
    item_index: dict[str, int] = {}
    ann_codes: list[int] = []
    item_codes: list[int] = []
    values: list[Any] = []
    ann_names: list[str] = []
    for a, (annotator, labels) in enumerate(data.items()):
        ann_names.append(_key(path, "annotator", annotator))
        if labels is None:
            continue
        if not isinstance(labels, dict):
            raise InputError(path, annotator, type(labels).__name__,
                             "an annotator's labels must be a mapping {item: label}")
        _single_values(path, annotator, labels)
        codes = [item_index.setdefault(_key(path, annotator, item), len(item_index)) for item in labels]
        item_codes.extend(codes)
        ann_codes.extend([a] * len(codes))
        values.extend(labels.values())

    gold_values = None
    gold_items: list[int] = []
    gold_path = Path(src.gold) if src.gold is not None else None
    if gold_path is not None:
        gold_data = _load_mapping(gold_path, "gold", "{item: label}")
        _single_values(gold_path, "gold", gold_data)
        gold_items = [item_index.setdefault(_key(gold_path, "item", item), len(item_index)) for item in gold_data]
        gold_values = list(gold_data.values())
    item_names = list(item_index)
    if not item_names:
        raise InputError(path, None, 0, "empty: no labels and no gold")

    label_codes, gold_codes, class_list = encode_with_gold(
        _object_array(values), None if gold_values is None else _object_array(gold_values), classes,
        (path, "label"), (str(gold_path), "gold"),
    )
    ann_array, ann_names = sort_codes(np.asarray(ann_codes, dtype=np.int64), ann_names)
    check_annotators(ann_names, annotators, path, "annotator")
    frames = np.asarray(item_codes, dtype=np.int64)
    labelled = label_codes >= 0
    labels = fill_labels(
        len(item_names), len(ann_names), frames[labelled], ann_array[labelled], label_codes[labelled],
        path, "label", item_names.__getitem__, ann_names,
    )
    gold = None
    sources = {"labels": str(path)}
    if gold_codes is not None and gold_path is not None:
        gold = np.full(len(item_names), -1, dtype=np.int16)
        gold[gold_items] = gold_codes
        sources["gold"] = str(gold_path)
    return Batch(
        sequence_names=list(item_names),
        sequence_lengths=np.ones(len(item_names), dtype=np.int64),
        annotators=ann_names,
        classes=class_list,
        labels=labels,
        gold=gold,
        item_names=item_names,
        sources=sources,
    )


def _load_mapping(path: Path, field: str, shape: str) -> dict[str, Any]:  # JSON boundary: a parsed mapping file
    """Parse a YAML/JSON file that must hold a mapping; `field` is its source key, `shape` its form."""
    data = load_yaml(path, field, typed=False, limit=MAX_TEXT_BYTES)
    if not isinstance(data, dict):
        raise InputError(path, field, type(data).__name__, f"the file must hold a mapping {shape}")
    return data


def _key(path: Path, field: str, key: Any) -> str:
    """A key as the text the file writes (not stripped); a key without text (`~`, blank) is an error."""
    if not isinstance(key, str) or not key.strip():
        raise InputError(path, field, key, "a key must be non-empty text")
    return key


def _single_values(path: Path, field: str, labels: dict[str, Any]) -> None:  # JSON boundary: parsed labels
    """Every label is one value (text or null), not a list or a mapping."""
    for item, label in labels.items():
        if isinstance(label, (list, dict)):
            raise InputError(path, field, item, f"the label of item {item!r} must be a single value, not a "
                                                f"{'list' if isinstance(label, list) else 'mapping'}")


def _object_array(values: list[Any]) -> np.ndarray:
    """Values as a 1-d object array, so that numpy never turns mixed values into text."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out
