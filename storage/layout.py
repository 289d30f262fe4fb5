"""The one owner of every path and URI under a root folder.

`RootLayout(root, uri_prefix)` is built once per command (from `--root` and the config's
`store.uri_prefix`) and handed down; no other module joins path parts under the root.

    <root>/
      datasets/<name>.zarr          dataset store (or under `uri_prefix`)
      predictions/<name>.zarr       prediction store (or under `uri_prefix`)
      models/<name>/<key>/          one training run: checkpoint, history, summary, model/, figures/
      analysis/<name>/              analysis tables, figures/, summary.json
      probes/<name>/<key>/          probe tables and figures
      exports/<name>/npz/           the MABe notebook's npz layout
      cache/keys, cache/results     the pipeline's stage cache (Prefect's persisted results)
      cache/matplotlib, cache/dask  library scratch space
      cache/numba                   Numba's compiled kernels (NUMBA_CACHE_DIR)
      prefect/                      PREFECT_HOME (Prefect's SQLite database)
      prefect/server.json           the root's shared Prefect server: pid, port, URL (flows.server)
      prefect/server.lock           held while one command starts that server
      prefect/server.users          a shared lock held by every command using it (idle shutdown)
      prefect/server.log            its log
      prefect/host.json             the root's command host: pid, socket, code and environment (flows.host)
      prefect/host.sock, host.lock  the host's Unix socket (owner only); held while one command starts it
      prefect/host.log              its log
      watch/<name>.json             the watcher's ledger
      mlflow.db, mlartifacts/       the MLflow tracking store and its artifacts
      mlflow.db.lock                held while that store's schema is created
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from storage.location import store_uri

DATASETS = "datasets"
PREDICTIONS = "predictions"
PREFECT_DATABASE = "prefect.db"
PREFECT_MEMO = "memo_store.toml"  # Prefect's record of the block types it registered in the database


def prefect_template(prefect_version: str) -> Path:
    """An empty, migrated Prefect database (and its block registration memo) that a new root's
    server starts from, made once per environment (`python -m flows.server --template`): it
    lives in the environment, beside the Prefect version it was migrated by."""
    return Path(sys.prefix) / "share" / "annostyle" / f"prefect-{prefect_version}"


@dataclass(frozen=True)
class RootLayout:
    """Paths under `root`; dataset and prediction stores under `uri_prefix` when it is given.

    >>> layout = RootLayout(Path("/r"))
    >>> layout.dataset_uri("demo"), str(layout.analysis_dir("demo"))
    ('/r/datasets/demo.zarr', '/r/analysis/demo')
    >>> RootLayout(Path("/r"), "s3://bucket/p").prediction_uri("demo")
    's3://bucket/p/predictions/demo.zarr'
    """

    root: Path
    uri_prefix: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())

    # ------------------------------------------------------------------ stores
    def dataset_uri(self, name: str) -> str:
        return store_uri(self.root, DATASETS, name, self.uri_prefix)

    def prediction_uri(self, name: str) -> str:
        return store_uri(self.root, PREDICTIONS, name, self.uri_prefix)

    # ------------------------------------------------------------------ models
    def models_dir(self, name: str) -> Path:
        return self.root / "models" / name

    def run_dir(self, name: str, key: str) -> Path:
        """One training (or pretraining, fine-tuning) run's folder, keyed by its inputs."""
        return self.models_dir(name) / key

    # ------------------------------------------------------------------ outputs
    def analysis_dir(self, name: str) -> Path:
        return self.root / "analysis" / name

    def probe_dir(self, name: str, key: str) -> Path:
        return self.root / "probes" / name / key

    def npz_export_dir(self, name: str) -> Path:
        return self.root / "exports" / name / "npz"

    # ------------------------------------------------------------------ state of the tools
    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def cache_keys_dir(self) -> Path:
        """Where the stage cache's keys are stored."""
        return self.cache_dir / "keys"

    @property
    def cache_results_dir(self) -> Path:
        """Prefect's persisted task results (PREFECT_RESULTS_LOCAL_STORAGE_PATH)."""
        return self.cache_dir / "results"

    @property
    def matplotlib_dir(self) -> Path:
        return self.cache_dir / "matplotlib"

    @property
    def dask_dir(self) -> Path:
        return self.cache_dir / "dask"

    @property
    def numba_cache_dir(self) -> Path:
        """NUMBA_CACHE_DIR: kernels compiled once per root, not once per process (umap-learn's, ours)."""
        return self.cache_dir / "numba"

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect"

    @property
    def prefect_database(self) -> Path:
        """The root's Prefect server's SQLite database (Prefect's default place under PREFECT_HOME)."""
        return self.prefect_home / PREFECT_DATABASE

    @property
    def server_state(self) -> Path:
        """The root's shared Prefect server: pid, port and URL, written by the server itself."""
        return self.prefect_home / "server.json"

    @property
    def server_lock(self) -> Path:
        """Held while a command starts the shared server, so two commands never start two."""
        return self.prefect_home / "server.lock"

    @property
    def server_users(self) -> Path:
        """A shared `flock` held by each command that uses the server: how the server knows it is idle."""
        return self.prefect_home / "server.users"

    @property
    def server_log(self) -> Path:
        return self.prefect_home / "server.log"

    @property
    def host_state(self) -> Path:
        """The root's command host (`flows.host`): pid, socket, code version, written once it is ready."""
        return self.prefect_home / "host.json"

    @property
    def host_lock(self) -> Path:
        """Held while a command starts the command host, so two commands never start two."""
        return self.prefect_home / "host.lock"

    @property
    def host_socket(self) -> Path:
        return self.prefect_home / "host.sock"

    @property
    def host_log(self) -> Path:
        return self.prefect_home / "host.log"

    def watch_ledger(self, name: str) -> Path:
        return self.root / "watch" / f"{name}.json"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_lock(self) -> Path:
        """Held while the tracking store's schema is created, so first runs never race."""
        return self.root / "mlflow.db.lock"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def local_tracking_uri(self) -> str:
        """The SQLite tracking URI of the root (MLFLOW_TRACKING_URI, read in storage.tracking, wins)."""
        return f"sqlite:///{self.mlflow_db}"
