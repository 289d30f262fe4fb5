"""Writing a file so that a crash leaves either the old file or the new one, never half of one.

The temporary file beside the target is made by `tempfile.mkstemp`: an unpredictable name,
created exclusively (O_CREAT | O_EXCL, and O_NOFOLLOW where the system has it), so a file or
symlink planted beside the target is never opened, followed or overwritten. It then replaces the
target in one rename (which replaces a symlink at the target itself, never what it points to).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    """The process's umask (read from /proc where it can be, so it is never changed meanwhile)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _temporary_beside(path: Path) -> Iterator[tuple[int, Path]]:
    """A new temporary file beside `path` (open descriptor, which the block closes, and name),
    renamed onto `path` when the block ends without an error, removed otherwise. Its mode is
    what `open` would give."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    tmp = Path(name)
    try:
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600, widened to the usual mode
        except OSError:
            os.close(fd)
            raise
        yield fd, tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """`write(tmp)` fills a new temporary file beside `path` (made as above; a name of its own, so
    concurrent writers never share one), which then replaces `path` in one rename."""
    with _temporary_beside(Path(path)) as (fd, tmp):
        os.close(fd)
        write(tmp)


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """`payload` written through the temporary file's own descriptor (its name is never reopened)."""
    with _temporary_beside(Path(path)) as (fd, _), os.fdopen(fd, "wb") as out:
        out.write(payload)


def atomic_write_json(path: Path, data: Any, **dumps: Any) -> None:
    """`data` as JSON (keyword arguments go to `json.dumps`)."""
    atomic_write_bytes(path, json.dumps(data, **dumps).encode())
