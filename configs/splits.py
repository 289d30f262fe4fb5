"""The split codes a dataset's own train / validation / test split is stored as (one int8 per frame).

- `train`: items the model may learn from; they carry crowd labels.
- `valid`: items for model selection only (gold and crowd labels allowed); never trained on.
- `test`: items for the reported figure only; they must carry no crowd label (refused at ingest).
- `UNASSIGNED` (-1): the data gives no split for the item; training then makes its own split.

Split values in input files are matched after stripping and lower-casing, with a few common
aliases (`validation`, `val`, `dev`); `split_code` is the one rule every reader follows.
"""

from __future__ import annotations

from typing import Any

SPLIT_CODES: dict[str, int] = {"train": 0, "valid": 1, "test": 2}
"""Split name -> the int8 code stored per frame."""

UNASSIGNED = -1
"""The code of an item the data gives no split for."""

SPLIT_NAMES: dict[int, str] = {code: name for name, code in SPLIT_CODES.items()}
"""Code -> split name."""

SPLIT_ALIASES: dict[str, str] = {
    "train": "train", "training": "train",
    "valid": "valid", "validation": "valid", "val": "valid", "dev": "valid",
    "test": "test", "testing": "test",
}
"""Accepted spellings of each split in input files (after strip and lower-case)."""


def split_code(value: Any) -> int | None:
    """The code of a split value from a file or config: -1 for an empty value (None, NaN, ""),
    None when the value is no known split (the caller raises an InputError naming it)."""
    if value is None or (isinstance(value, float) and value != value):
        return UNASSIGNED
    text = str(value).strip().lower()
    if text == "":
        return UNASSIGNED
    name = SPLIT_ALIASES.get(text)
    return None if name is None else SPLIT_CODES[name]
