"""The code version: one hash of the project's sources, for the stage cache and the command host."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

PACKAGES = ("configs", "errors", "flows", "storage", "tasks")


@lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of the project's Python sources: any code change invalidates every cached stage and
    retires a command host that imported the old code."""
    digest = hashlib.sha256()
    base = Path(__file__).resolve().parent.parent
    for package in PACKAGES:
        for path in sorted((base / package).rglob("*.py")):
            digest.update(str(path.relative_to(base)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
