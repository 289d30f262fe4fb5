"""Loading what a registry entry (`configs.registry.Entry`) names."""

from __future__ import annotations

import importlib
from typing import Any

from configs.registry import Entry


def load(entry: Entry) -> Any:
    """The object at `entry.target` ("package.module:attribute"), imported on first use."""
    module, _, attribute = entry.target.partition(":")
    return getattr(importlib.import_module(module), attribute)
