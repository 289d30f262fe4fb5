"""The errors every layer raises; this package imports nothing of the project's.

`InputError` is bad input (config, data file, batch, argument): the command line turns it into
exit code 2 with a message naming the file, the field and the value.
"""

from __future__ import annotations

from typing import Any


class InputError(ValueError):
    """Bad input (config, data file, batch): raised before any store is touched.

    >>> str(InputError("labels.csv", "worker", "bob", "unknown annotator"))
    "labels.csv: field 'worker': unknown annotator (value: 'bob')"
    """

    def __init__(self, file: Any, field: str | None, value: Any, problem: str) -> None:
        self.file = str(file)
        self.field = field
        self.value = value
        self.problem = problem
        where = f"{self.file}: field {field!r}" if field else self.file
        shown = repr(value)
        if len(shown) > 200:
            shown = shown[:200] + "..."
        super().__init__(f"{where}: {problem} (value: {shown})")


class DamagedStore(InputError):
    """A store file that fails its check (a checksum, a missing chunk, an edited manifest).

    `file` is the chunk or metadata file, `field` the array (or "manifest"), `value` what was
    found. Never read as data: the command stops and names the file.
    """


__all__ = ["DamagedStore", "InputError"]
