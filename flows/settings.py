"""Environment defaults for a run under a root folder, set before Prefect or MLflow load."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from contextvars import ContextVar
from pathlib import Path

DEFAULT_ROOT = Path(".annostyle")
HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"  # Prefect's; PREFECT_RUNNER_... is its older name
QUIET_SERVICES = ("EventsWorker", "APILogWorker")  # Prefect's services' loggers, named after their classes
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s%(dataset)s: %(message)s"  # `dataset`: see DatasetTag
DATASET: ContextVar[str | None] = ContextVar("annostyle_dataset", default=None)
"""The dataset whose work this context does, while several run side by side (`flows.run`):
its log lines say `[name]`."""


def apply_defaults(root: Path) -> None:
    """Keep Prefect's, Matplotlib's, Dask's and Numba's state under the root and quiet their noise.

    Values already in the environment win, so a Prefect server or an MLflow tracking server
    given there is used as it is.
    """
    from storage.layout import RootLayout  # here, not at the top: `annostyle --help` stays fast

    layout = RootLayout(root)
    defaults = {
        "PREFECT_HOME": str(layout.prefect_home),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        # persisted task results (the pipeline's stage cache); keys name the root they belong to
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(layout.cache_results_dir),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "MPLCONFIGDIR": str(layout.matplotlib_dir),
        "DASK_TEMPORARY_DIRECTORY": str(layout.dask_dir),
        "NUMBA_CACHE_DIR": str(layout.numba_cache_dir),  # read when numba is first imported
        "DASK_LOGGING__DISTRIBUTED": "warning",
        "GIT_PYTHON_REFRESH": "quiet",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    layout.root.mkdir(parents=True, exist_ok=True)


def heartbeat_setting() -> str | None:
    """The flow runs' heartbeat period the environment asks for (Prefect's variable or its older name)."""
    return os.environ.get(HEARTBEAT_ENV) or os.environ.get("PREFECT_RUNNER_HEARTBEAT_FREQUENCY") or None


def setup_logging() -> None:
    """Warnings from libraries, progress (INFO) from our own packages, all on stderr."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format=LOG_FORMAT)
    for handler in logging.root.handlers:
        if not any(isinstance(f, DatasetTag) for f in handler.filters):
            handler.addFilter(DatasetTag())
    for ours in ("flows", "tasks", "storage"):
        logging.getLogger(ours).setLevel(logging.INFO)
    # Prefect's event and log services say "Still processing items" when they drain at exit,
    # which every command does; a failure there is still an error
    for service in QUIET_SERVICES:
        logging.getLogger(service).setLevel(logging.ERROR)


def flush_output() -> None:
    """Flush the log handlers and the standard streams, as the interpreter would at exit: for a
    process that then ends with `os._exit` (the teardown of every imported module costs seconds
    once Prefect, MLflow and torch are loaded, and writes nothing)."""
    with contextlib.suppress(BaseException):
        logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()


class DatasetTag(logging.Filter):
    """Gives every record the `dataset` field of the log format: ` [name]` in a dataset's lane."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = DATASET.get()
        record.dataset = f" [{name}]" if name else ""
        return True
