"""Registries: the extension points (readers, heads, distance metrics) and their names.

An entry names its implementation as `"package.module:attribute"`; the layer that implements it
(`tasks/`) imports it when it is used (`tasks.registry.load`), so this layer names the
implementations without importing them, and a config's allowed values come from the registry:
a new reader, head or metric is one module plus one `register(...)` line.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar


@dataclass(frozen=True)
class Entry:
    """One registered implementation: its name in configs and where its code lives."""

    name: str
    target: str  # "package.module:attribute"


E = TypeVar("E", bound=Entry)


class Registry(Generic[E]):
    """Named entries of one kind, in registration order.

    >>> metrics = Registry[Entry]("metric")
    >>> _ = metrics.register(Entry("euclidean", "tasks.distances:euclidean"))
    >>> metrics.names(), metrics.check("euclidean")
    (('euclidean',), 'euclidean')
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, E] = {}

    def register(self, entry: E) -> E:
        """Add an entry; a name registered twice is a programming error."""
        if entry.name in self._entries and self._entries[entry.name] != entry:
            raise ValueError(f"{self.kind} {entry.name!r} is registered twice")
        self._entries[entry.name] = entry
        return entry

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def check(self, name: str) -> str:
        """The name, if registered; else a ValueError listing the registered ones (for validators)."""
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self._entries)}")
        return name

    def __getitem__(self, name: str) -> E:
        return self._entries[self.check(name)]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[E]:
        return iter(self._entries.values())
