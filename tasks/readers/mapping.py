"""Reader for nested mappings `{annotator: {item: label}}` in YAML or JSON, with gold `{item: label}`.

Keys become text (`str(key)`: YAML reads the bluebirds ids as ints). Items are the labelled items
in first-seen order followed by the gold-only items.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from configs.sources import MappingSource
from errors import InputError
from storage.batch import Batch
from tasks.readers.common import check_annotators, encode_with_gold, fill_labels, sort_codes

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_mapping(
    src: MappingSource,
    classes: Sequence[bool | int | str] | None = None,
    annotators: Sequence[str] | None = None,
) -> Batch:
    """Read a `{annotator: {item: label}}` file (and an optional gold `{item: label}`) into a Batch."""
    path = Path(src.labels)
    data = _load_mapping(path, "{annotator: {item: label}}")
    item_index: dict[str, int] = {}
    ann_codes: list[int] = []
    item_codes: list[int] = []
    values: list[Any] = []
    ann_names: list[str] = []
    for a, (annotator, labels) in enumerate(data.items()):
        ann_names.append(str(annotator))
        if labels is None:
            continue
        if not isinstance(labels, dict):
            raise InputError(path, str(annotator), type(labels).__name__,
                             "an annotator's labels must be a mapping {item: label}")
        codes = [item_index.setdefault(str(item), len(item_index)) for item in labels]
        if len(set(codes)) != len(codes):
            raise InputError(path, str(annotator), _repeated(labels), "item key given twice (as text and number)")
        item_codes.extend(codes)
        ann_codes.extend([a] * len(codes))
        values.extend(labels.values())
    if len(set(ann_names)) != len(ann_names):
        raise InputError(path, "annotator", _repeated(data), "annotator key given twice (as text and number)")

    gold_values = None
    gold_items: list[int] = []
    gold_path = Path(src.gold) if src.gold is not None else None
    if gold_path is not None:
        gold_data = _load_mapping(gold_path, "{item: label}")
        gold_items = [item_index.setdefault(str(item), len(item_index)) for item in gold_data]
        if len(set(gold_items)) != len(gold_items):
            raise InputError(gold_path, "item", _repeated(gold_data), "item key given twice (as text and number)")
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


def _load_mapping(path: Path, shape: str) -> dict[Any, Any]:
    """Parse a YAML/JSON file that must hold a mapping; `shape` describes it in errors."""
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(path, None, first, "not valid YAML or JSON") from err
    if not isinstance(data, dict):
        raise InputError(path, None, type(data).__name__, f"the file must hold a mapping {shape}")
    return data


def _object_array(values: list[Any]) -> np.ndarray:
    """Values as a 1-d object array, so that numpy never turns mixed values into text."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _repeated(mapping: dict[Any, Any]) -> str:
    """The first key whose text repeats an earlier key's text."""
    seen: set[str] = set()
    for key in mapping:
        if str(key) in seen:
            return str(key)
        seen.add(str(key))
    return ""
