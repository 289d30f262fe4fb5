"""Fresh worker processes for the independent pieces of one stage (the seeds of a training, the
probes of a representation check): `process_pool` and `results_in_order`."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
OURS = ("tasks", "storage")
"""Our packages whose progress lines a worker logs at its parent's level."""


def usable_cores() -> int:
    """The cores this process may run on (its affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0))


def process_pool(workers: int, threads: int = 1) -> ProcessPoolExecutor:
    """`workers` spawned processes: fresh ones (no forked torch or thread state) that die with
    this one (Linux's parent-death signal: no worker outlives a killed command), log our
    packages' lines at this process's level to the inherited stderr, and run their BLAS and
    OpenMP pools on `threads` threads each: without the limit each worker's BLAS took every
    core, and 12 linear probes in 2 workers on 2 cores took 84 s instead of 30."""
    level = logging.getLogger(OURS[0]).getEffectiveLevel()
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start, initargs=(level, os.getpid(), threads))


def thread_limits(threads: int = 1) -> contextlib.AbstractContextManager[object]:
    """BLAS and OpenMP pools on `threads` threads for the block, as in a worker of
    `process_pool(..., threads)`: a piece computes the same in a worker and here."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads)


_SHARED: list[int] = []  # the thread count `shared_threads` holds the process's pools at, while it lasts


@contextlib.contextmanager
def shared_threads(threads: int) -> Iterator[None]:
    """Every thread pool of this process (BLAS, OpenMP, torch's) on `threads` threads for the
    block, whatever a config's `train.threads` asks (`torch_threads`): datasets that run side
    by side in threads of one process share its pools, and one must not resize them under
    another. The environment says it too, for the pools that load during the block."""
    saved = {name: os.environ.get(name) for name in THREAD_ENVS}
    torch = sys.modules.get("torch")  # a label-only run never imports torch; `torch_threads` does
    before = torch.get_num_threads() if torch is not None else None
    _set_thread_envs(threads)
    _SHARED.append(threads)
    try:
        with thread_limits(threads):
            if torch is not None:
                torch.set_num_threads(threads)
            yield
    finally:
        _SHARED.pop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if torch is not None and before is not None:
            torch.set_num_threads(before)


def torch_threads(threads: int | None) -> None:
    """Torch's CPU threads: `threads` (None: torch's default), or the count `shared_threads` holds."""
    import torch

    if _SHARED:
        threads = _SHARED[-1]
    if threads:
        torch.set_num_threads(threads)


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


THREAD_ENVS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
               "NUMEXPR_NUM_THREADS")
_LIMITS: list[object] = []  # the worker's thread limits, kept for its lifetime


def _start(level: int, parent: int, threads: int) -> None:
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the pool's pipes end it, later
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    logging.basicConfig(level=logging.WARNING, handlers=[logging.StreamHandler()], force=True)
    for ours in OURS:
        logging.getLogger(ours).setLevel(level)
    _set_thread_envs(threads)  # read by the pools that load after this (scikit-learn's OpenMP, torch's)
    _LIMITS.append(thread_limits(threads))  # and the pools already loaded


def _set_thread_envs(threads: int) -> None:
    for name in THREAD_ENVS:
        os.environ[name] = str(threads)
