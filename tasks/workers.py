"""Fresh worker processes for the independent pieces of one stage (the seeds of a training, the
probes of a representation check): `process_pool` and `results_in_order`."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
OURS = ("tasks", "storage")
"""Our packages whose progress lines a worker logs at its parent's level."""


def usable_cores() -> int:
    """The cores this process may run on (its affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0))


def process_pool(workers: int) -> ProcessPoolExecutor:
    """`workers` spawned processes: fresh ones (no forked torch or thread state) that die with
    this one (Linux's parent-death signal: no worker outlives a killed command) and log our
    packages' lines at this process's level to the inherited stderr."""
    level = logging.getLogger(OURS[0]).getEffectiveLevel()
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start, initargs=(level, os.getpid()))


def results_in_order(pool: ProcessPoolExecutor, fn: Callable[..., T], calls: Sequence[tuple[Any, ...]]) -> list[T]:
    """`fn(*args)` for every call in the pool, the results in call order; the first error
    cancels the calls not yet started and is raised."""
    futures = [pool.submit(fn, *args) for args in calls]
    try:
        return [f.result() for f in futures]
    except BaseException:
        for f in futures:
            f.cancel()
        raise


def _start(level: int, parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the pool's pipes end it, later
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    logging.basicConfig(level=logging.WARNING, handlers=[logging.StreamHandler()], force=True)
    for ours in OURS:
        logging.getLogger(ours).setLevel(level)
