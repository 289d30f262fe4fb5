"""The MLflow side: the one place that records runs, stores and artifacts.

This module holds what every stage uses; `storage.tracking.<stage>` records one stage.

By default runs go to a SQLite database and an artifact folder under the root; the
`MLFLOW_TRACKING_URI` environment variable points them at a tracking server instead.
"""

from __future__ import annotations

import fcntl
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import mlflow
import sqlalchemy.exc
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset

from errors import DamagedStore
from storage.layout import RootLayout

# Read once, before anything here calls mlflow.set_tracking_uri (which writes this variable).
SERVER_URI = os.environ.get("MLFLOW_TRACKING_URI")


def tracking_uri(layout: RootLayout) -> str:
    """The tracking URI runs go to: MLFLOW_TRACKING_URI as the process started, else `<root>/mlflow.db`."""
    return SERVER_URI or layout.local_tracking_uri


_READY: set[str] = set()
"""The tracking URIs whose store this process has opened (its schema exists and is current)."""


def ensure_store(layout: RootLayout, uri: str | None = None) -> str:
    """Open the root's tracking store once per process, creating its schema under the root's lock.

    MLflow creates and migrates a SQLite store's tables on first open, unguarded: two first runs on
    a fresh root race on it and leave a half-made schema. Holding `RootLayout.mlflow_lock` while
    the store is opened lets one process make the schema and the others find it made. A tracking
    server (MLFLOW_TRACKING_URI) does this itself. `uri` defaults to `tracking_uri(layout)`;
    returns it.
    """
    uri = uri or tracking_uri(layout)
    if uri in _READY or not uri.startswith("sqlite:"):
        return uri
    layout.root.mkdir(parents=True, exist_ok=True)
    with open(layout.mlflow_lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
        try:
            mlflow.MlflowClient(uri).search_experiments(max_results=1)
        except (mlflow.exceptions.MlflowException, sqlalchemy.exc.SQLAlchemyError) as err:
            where = layout.mlflow_db if uri == layout.local_tracking_uri else uri
            raise DamagedStore(where, "schema", type(err).__name__,
                               f"the MLflow tracking store cannot be opened ({str(err).splitlines()[0][:300]}); move it "
                               "away to start a new one (the runs recorded in it are then not listed)") from err
    _READY.add(uri)
    return uri


def warm_caches() -> None:
    """Fill what MLflow computes once per process and every model log needs: its map of modules
    to installed packages (`importlib.metadata.packages_distributions()` over every installed
    distribution, 1.4 s on 2 cores), with which `log_model` checks the pip requirements. Called
    by the command host (`flows.host`) so that its children find it filled; a private MLflow
    function, so a release without it only loses the head start."""
    from mlflow.utils import requirements_utils

    fill = getattr(requirements_utils, "_init_modules_to_packages_map", None)
    if fill is not None:
        fill()


def use_root(layout: RootLayout) -> str:
    """Point MLflow at the root's tracking store (opened under the root's lock); return its URI."""
    uri = ensure_store(layout)
    mlflow.set_tracking_uri(uri)
    return uri


def experiment_for(dataset: str, layout: RootLayout) -> str:
    """The experiment of a dataset (created on first use, artifacts under the root when local)."""
    name = f"annostyle/{dataset}"
    if mlflow.get_experiment_by_name(name) is None:
        location = None
        if mlflow.get_tracking_uri().startswith("sqlite:"):
            location = layout.mlflow_artifacts.as_uri()
        try:
            mlflow.create_experiment(name, artifact_location=location)
        except mlflow.exceptions.MlflowException:
            if mlflow.get_experiment_by_name(name) is None:  # not a lost race: a real error
                raise
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        raise RuntimeError(f"MLflow experiment {name} was created but cannot be read back")
    return experiment.experiment_id


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:  # JSON boundary: a config as params
    """Nested mappings as dotted keys, the way MLflow params are shown."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


@contextmanager
def stage_run(layout: RootLayout, dataset: str, stage: str, config: Mapping[str, Any],
              tags: Mapping[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run for one stage, with the whole config as params (nested if a run is active)."""
    use_root(layout)
    experiment = experiment_for(dataset, layout)
    nested = mlflow.active_run() is not None
    with mlflow.start_run(experiment_id=experiment, run_name=f"{stage}:{dataset}", nested=nested) as run:
        mlflow.set_tags({"annostyle.stage": stage, "annostyle.dataset": dataset, **(tags or {})})
        params = {k: str(v)[:6000] for k, v in flatten(config).items()}
        mlflow.log_params(params)
        yield run


class StoreSource(DatasetSource):
    """A store at an fsspec URL that MLflow has no source type for (memory://, hdfs://, ...)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    @staticmethod
    def _get_source_type() -> str:
        return "fsspec"

    def load(self, dst_path: str | None = None) -> str:
        raise NotImplementedError("open the store with storage.dataset_store / storage.prediction_store")

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source: Any) -> StoreSource:
        return cls(str(raw_source))

    def to_dict(self) -> dict[str, Any]:  # JSON boundary: MLflow stores a source as JSON
        return {"uri": self.uri}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> StoreSource:
        return cls(source_dict["uri"])


def log_store_input(uri: str, name: str, version: str, context: str) -> None:
    """Record a store as an MLflow dataset input whose digest is the store's version."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow warns that a local path has two readings
        try:
            source = resolve_dataset_source(uri)
        except mlflow.exceptions.MlflowException:
            source = StoreSource(uri)
    dataset = MetaDataset(source=source, name=name, digest=version)  # type: ignore[abstract]  # mlflow's stubs
    for attempt in range(3):
        try:
            mlflow.log_input(dataset, context=context)
            return
        except mlflow.exceptions.MlflowException as err:
            # MLflow looks the dataset up, then inserts it: two runs that record the same store
            # at the same moment (first runs on a fresh root, forked at once by the command
            # host) race on the insert; the loser finds the winner's row when it tries again
            if "UNIQUE constraint failed: datasets" not in str(err) or attempt == 2:
                raise


def log_metrics(metrics: Mapping[str, float | int | None], step: int | None = None) -> None:
    """Log the numeric entries, skipping those that are None."""
    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None}, step=step)


@contextmanager
def parent_run(layout: RootLayout, dataset: str, name: str, config: Mapping[str, Any],
               tags: Mapping[str, str]) -> Iterator[mlflow.ActiveRun]:
    """The parent run of one pipeline or reprocess run; stage runs started inside nest under it.

    A stage run started with no run active (MLflow refuses a second top-level run).
    """
    with stage_run(layout, dataset, name, config, tags) as run:
        yield run


def stage_record(stages: Mapping[str, Mapping[str, Any]]) -> None:
    """What each stage of the active parent run did, as a JSON artifact and 0/1 metrics."""
    mlflow.log_dict({"stages": dict(stages)}, "pipeline.json")
    mlflow.log_metrics({f"stage_{s}_reused": float(v["status"] == "reused") for s, v in stages.items()})
