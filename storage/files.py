"""Writing a file so that a crash leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """`write(tmp)` fills a temporary file beside `path` (a name of its own, so concurrent writers
    never share one), which then replaces `path` in one rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(payload))


def atomic_write_json(path: Path, data: Any, **dumps: Any) -> None:
    """`data` as JSON (keyword arguments go to `json.dumps`)."""
    atomic_write_bytes(path, json.dumps(data, **dumps).encode())
