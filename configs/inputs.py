"""What one input may be, and how every input file is read: one rule for all readers and configs.

- Only regular files are read: a FIFO, a device (`/dev/zero`), a socket or a folder where a file
  is expected is refused before any byte is read (`open_input` opens without blocking and checks
  the opened file), so no input can hang a command.
- Every size has a limit (the `MAX_*` constants below); an input over one is an InputError that
  names the limit, checked before anything that big is allocated.
- Text is UTF-8 (a UTF-8 byte-order mark is allowed); anything else is an InputError naming the
  byte.
- YAML and JSON are read by one event-driven parser (`parse_yaml`) that builds no recursive
  structure: aliases are refused (an alias bomb fails at its first `*`), duplicate keys are an
  error naming the key and both lines, nesting is limited to `MAX_DEPTH`, keys must be scalars.
  Data files are read as text (`typed=False`): every key and label is the string the file
  writes (`no` stays "no", `010` stays "010", `1:30` stays "1:30"; only a plain `null`, `~` or
  empty value means "no value"). Configs are typed by the YAML 1.2 core schema (`typed=True`):
  `true`/`false` (any case of the first letter or all caps), decimal, `0o` and `0x` integers,
  floats, null; nothing else (no `yes`/`no`/`on`/`off`, no base 60, no dates).
- Class keys (`class_key`): the text of a label as the store keeps it. Text stays as written
  (stripped) except `true`/`false` in any case, which become lower case; typed values (JSON
  numbers, Parquet columns, config lists) become text: a bool `true`/`false`, an integer or a
  whole float its decimal digits, any other float its shortest repr. A label set that holds
  both `true` and `1` (or `false` and `0`) is ambiguous and refused (`check_classes`), so a file
  never silently merges or splits them.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import yaml

from errors import InputError

MAX_FRAMES = 100_000_000
"""Frames in one batch (all sequences together); the demo's `large` size makes 10 million."""
MAX_SEQUENCE_FRAMES = 5_000_000
"""Frames in one sequence (46 hours at 30 frames/s); a table row's `frame` must be below it."""
MAX_ANNOTATORS = 100_000
"""Annotators in one batch."""
MAX_CLASSES = 32_767
"""Classes: labels are int16 codes with -1 for "not labelled"."""
MAX_LABEL_CELLS = 1 << 30
"""Frames x annotators of one batch's label matrix (2 GiB of int16)."""
MAX_FEATURES_PER_FRAME = 1 << 20
"""Feature values per frame."""
MAX_DEPTH = 64
"""Nesting levels of a YAML or JSON file (a config needs 5, a mapping file 2)."""
MAX_CONFIG_BYTES = 1 << 20
"""Size of a config or batch YAML file (1 MiB)."""
MAX_TEXT_BYTES = 1 << 30
"""Size of a YAML or JSON data file (a mapping or a track; 1 GiB)."""
MAX_TABLE_BYTES = 1 << 34
"""Size of a table or feature file (16 GiB)."""
MAX_CHUNK_FRAMES = 1 << 24
"""Frames per store or read chunk (a config's `chunk_frames`)."""
MAX_SEED = 2**32 - 1
"""Largest seed (NumPy, torch and scikit-learn all take it)."""

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def check_regular(path: str | Path, field: str | None) -> int:
    """The size of `path` if it is a regular file (symlinks followed); else an InputError."""
    try:
        info = os.stat(path)
    except FileNotFoundError as err:
        raise InputError(path, field, str(path), "file not found") from err
    except OSError as err:
        raise InputError(path, field, str(path), f"cannot read the file: {err.strerror or err}") from err
    if not stat.S_ISREG(info.st_mode):
        raise InputError(path, field, str(path), f"{_kind(info.st_mode)}: only regular files are read")
    return info.st_size


def check_size(path: str | Path, field: str | None, size: int, limit: int) -> None:
    """An InputError when a file is larger than `limit` bytes."""
    if size > limit:
        raise InputError(path, field, size, f"file too large: {size:,} bytes, the limit is {limit:,}")


@contextmanager
def open_input(path: str | Path, field: str | None, limit: int) -> Iterator[IO[bytes]]:
    """Open a regular file of at most `limit` bytes for reading, never blocking on a FIFO or device.

    The file is opened with O_NONBLOCK and checked again once open, so a file swapped for a
    FIFO after the first check cannot hang the read either.
    """
    check_size(path, field, check_regular(path, field), limit)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise InputError(path, field, str(path), f"cannot open the file: {err.strerror or err}") from err
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise InputError(path, field, str(path), f"{_kind(info.st_mode)}: only regular files are read")
    os.set_blocking(fd, True)
    with os.fdopen(fd, "rb") as file:
        yield file


def read_text(path: str | Path, field: str | None, limit: int) -> str:
    """A regular file of at most `limit` bytes as UTF-8 text; other encodings name the byte."""
    with open_input(path, field, limit) as file:
        data = file.read(limit + 1)
    check_size(path, field, len(data), limit)
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise InputError(path, field, data[:2].hex(" "), "UTF-16 text: save the file as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(path, field, data[err.start:err.start + 4].hex(" "),
                         f"not UTF-8 text: byte {err.start} cannot be decoded") from err


# --- YAML and JSON --------------------------------------------------------------------------------

_Parser = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_NULL = re.compile(r"~|null|Null|NULL|")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_SPECIAL_FLOAT = {".inf": float("inf"), "+.inf": float("inf"), "-.inf": float("-inf"), ".nan": float("nan")}
_STR_TAG = "tag:yaml.org,2002:str"


def _core_scalar(text: str) -> Any:
    """A plain YAML scalar typed by the YAML 1.2 core schema (no YAML 1.1 `yes`, `010` octal, base 60)."""
    if _NULL.fullmatch(text):
        return None
    if text in _BOOL:
        return _BOOL[text]
    if _INT.fullmatch(text):
        return int(text[2:], 8) if text.startswith("0o") else int(text, 16 if text.startswith("0x") else 10)
    if _FLOAT.fullmatch(text):
        return float(text)
    return _SPECIAL_FLOAT.get(text.lower(), text)


def _scalar(event: Any, path: str | Path, typed: bool, field: str | None) -> Any:
    plain = not event.style
    if event.tag not in (None, "!", _STR_TAG):
        raise InputError(path, field, event.tag, f"line {event.start_mark.line + 1}: YAML tags are not allowed")
    if not plain or event.tag == _STR_TAG:
        return event.value
    if typed:
        return _core_scalar(event.value)
    return None if _NULL.fullmatch(event.value) else event.value


class _Open:
    """A list or mapping being filled, with the pending key and the line of every key (mappings)."""

    __slots__ = ("value", "key", "lines", "expect_key")

    def __init__(self, value: list[Any] | dict[Any, Any]) -> None:
        self.value = value
        self.key: Any = None
        self.lines: dict[Any, int] = {}
        self.expect_key = isinstance(value, dict)


def parse_yaml(text: str, path: str | Path, *, typed: bool, field: str | None = None) -> Any:
    """Parse one YAML (or JSON) document without aliases, duplicate keys or deep nesting.

    `typed=False` (data files): scalars are the text the file writes, a plain null/`~`/empty
    is None. `typed=True` (configs): the YAML 1.2 core schema. Keys must be scalars; mapping
    keys are compared as parsed (`typed=False`: as text). Errors name the key path where the
    parser was, else `field`.
    """
    parser = _Parser(text)
    try:
        return _parse(parser, path, typed, field)
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise InputError(path, field, first, f"{where}not valid YAML or JSON: {' '.join(str(err).split())}") from err
    finally:
        parser.dispose()


def _parse(parser: Any, path: str | Path, typed: bool, field: str | None) -> Any:  # JSON boundary: parsed YAML
    stack: list[_Open] = []

    def _field(stack: list[_Open]) -> str | None:
        return _key_path(stack) or field

    result: Any = None
    done = False
    while True:
        event = parser.get_event()
        line = event.start_mark.line + 1 if event.start_mark is not None else 0
        if isinstance(event, (yaml.StreamStartEvent, yaml.DocumentStartEvent, yaml.DocumentEndEvent)):
            continue
        if isinstance(event, yaml.StreamEndEvent):
            return result
        if done:
            raise InputError(path, None, line, f"line {line}: more than one YAML document in the file")
        if isinstance(event, yaml.AliasEvent):
            raise InputError(path, _field(stack), f"*{event.anchor}",
                             f"line {line}: YAML aliases are not allowed (write the value out)")
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            if stack and stack[-1].expect_key:
                raise InputError(path, _field(stack), None, f"line {line}: a key must be a single value, not a list or mapping")
            if event.tag not in (None, "!") and not event.implicit:
                raise InputError(path, _field(stack), event.tag, f"line {line}: YAML tags are not allowed")
            if len(stack) >= MAX_DEPTH:
                raise InputError(path, _field(stack), len(stack) + 1, f"line {line}: nested deeper than {MAX_DEPTH} levels")
            stack.append(_Open([] if isinstance(event, yaml.SequenceStartEvent) else {}))
            continue
        if isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            value = stack.pop().value
        else:
            value = _scalar(event, path, typed, _field(stack))
        if not stack:
            result, done = value, True
            continue
        top = stack[-1]
        if isinstance(top.value, list):
            top.value.append(value)
        elif top.expect_key:
            if not isinstance(value, (str, int, float, bool)) and value is not None:
                raise InputError(path, _field(stack), value, f"line {line}: a key must be a single value")
            if value in top.lines:
                raise InputError(path, _field(stack), value,
                                 f"line {line}: duplicate key (first given on line {top.lines[value]})")
            top.key, top.expect_key = value, False
            top.lines[value] = line
        else:
            top.value[top.key] = value
            top.expect_key = True


def _key_path(stack: list[_Open]) -> str | None:
    """The dotted path of keys to where the parser is, for errors."""
    keys = [str(level.key) for level in stack if isinstance(level.value, dict) and not level.expect_key]
    return ".".join(keys) or None


def load_yaml(path: str | Path, field: str | None, *, typed: bool, limit: int) -> Any:
    """Read and parse a YAML or JSON file (see `parse_yaml`)."""
    return parse_yaml(read_text(path, field, limit), path, typed=typed, field=field)


# --- class keys -----------------------------------------------------------------------------------


def class_key(value: Any) -> str:
    """Canonical text of a label value, so that YAML `true`, CSV `"True"` and 1.0 vs 1 agree.

    >>> [class_key(v) for v in (True, "false", 2, 2.0, " N1 ", "010", "1.0")]
    ['true', 'false', '2', '2', 'N1', '010', '1.0']
    """
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            raise ValueError(f"not a label: {value!r}")
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    if not isinstance(value, str):
        raise ValueError(f"not a label: {value!r}")
    text = value.strip()
    if text.lower() in ("true", "false"):
        return text.lower()
    return text


_AMBIGUOUS = (("true", "1"), ("false", "0"))


def check_classes(keys: Iterable[str], file: str | Path, field: str | None) -> None:
    """Refuse a class list over `MAX_CLASSES`, or holding both `true` and `1` (or `false` and `0`)."""
    present = set(keys)
    if len(present) > MAX_CLASSES:
        raise InputError(file, field, len(present), f"too many classes: the limit is {MAX_CLASSES:,} (labels are int16)")
    for boolean, number in _AMBIGUOUS:
        if boolean in present and number in present:
            raise InputError(file, field, [boolean, number],
                             f"both {boolean!r} and {number!r} are labels: ambiguous (is {boolean} the class {number}?); "
                             "write one of them")


def check_count(file: str | Path, field: str | None, count: int, limit: int, what: str) -> None:
    """An InputError when an input makes more `what` than `limit` allows."""
    if count > limit:
        raise InputError(file, field, count, f"too many {what}: the limit is {limit:,}")
