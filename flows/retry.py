"""Prefect retry conditions: which task failures are worth another try."""

from __future__ import annotations

from typing import Any

from errors import InputError


def retry_unless_bad_input(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient failures (I/O, a lost worker), never bad input."""
    try:
        state.result()
    except InputError:
        return False
    except Exception:
        return True
    return False
