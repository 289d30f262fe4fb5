"""The pipeline's stage cache: a stage reruns only when its inputs or the code changed.

A stage is a Prefect task cached under a key made of the stage's name, the root, the code
version and its inputs (dataset version, its config section, what the stage before produced).
Results are persisted as JSON by Prefect (under `RootLayout.cache_results_dir`, keys under
`RootLayout.cache_keys_dir`); a typed `StageResult` comes back from the cache as its own class.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from prefect import Task
from prefect.cache_policies import CacheKeyFnPolicy

from flows.version import code_version
from storage.layout import RootLayout
from storage.results import StageResult

log = logging.getLogger(__name__)

R = TypeVar("R", bound=StageResult)


def stage_key(stage: str, layout: RootLayout, *parts: Any) -> str:
    """The cache key of a stage: its name, the root, the code version and its inputs (JSON-able)."""
    payload = json.dumps([stage, str(layout.root), code_version(), *parts], sort_keys=True, default=str)
    return f"annostyle-{stage}-{hashlib.sha256(payload.encode()).hexdigest()[:24]}"


def run_cached(task: Task[..., R], key: str, layout: RootLayout, refresh: bool,
               outputs_exist: Callable[[R], bool], *args: Any, **kwargs: Any) -> tuple[R, bool]:
    """Run `task` cached under `key` (rerun it when `refresh`); returns (result, reused).

    A cached result whose outputs are gone (a deleted store, say) is not trusted: the stage
    runs again.
    """
    cached = task.with_options(
        cache_policy=CacheKeyFnPolicy(cache_key_fn=lambda *_: key).configure(key_storage=str(layout.cache_keys_dir)),
        persist_result=True, result_serializer="json", refresh_cache=refresh,
    )
    state = cached(*args, return_state=True, **kwargs)
    result: R = state.result()
    reused = state.name == "Cached"
    if reused and not outputs_exist(result):
        log.warning("cached %s result points at outputs that are gone: running it again", task.name)
        state = cached.with_options(refresh_cache=True)(*args, return_state=True, **kwargs)
        result, reused = state.result(), False
    return result, reused
