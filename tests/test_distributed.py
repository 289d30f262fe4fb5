"""Prediction and analysis on an existing Dask cluster: a `dask scheduler` and two `dask worker`
processes on 127.0.0.1, started here as real subprocesses, give exactly what the local run gives.

The workers import the project from the working tree (PYTHONPATH) and never start a Prefect API
(ephemeral mode is switched off for them): Dask tasks get store URIs and frame ranges, not arrays.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import CONFIGS, PROJECT
from test_distances import GROUPS, LOGITS, fill_store

from configs.schema import PipelineConfig, load_config
from storage.layout import RootLayout
from storage.location import remove_store
from storage.prediction_store import PredictionStore
from tasks.analyze import analyze
from tasks.distances import dask_scheduler, store_distances
from tasks.ingest import ingest
from tasks.predict import predict
from tasks.train import train_model

pytestmark = pytest.mark.slow

TINY = {  # a 1,200-frame demo and a one-epoch model small enough to train in a few seconds
    "source": {"n_sequences": 6, "sequence_length": 200, "n_annotators": 6},
    "train": {"baselines": [], "optim": {"max_epochs": 1},
              "encoder": {"dim": 16, "temporal": {"channels": 8, "blocks": 1, "context_frames": 9}}},
    "predict": {"chunk_frames": 256},  # five chunks: five Dask tasks to spread over the workers
    "analyze": {"umap": False, "tsne": False, "figures": False, "read_chunk_frames": 256},
}


def _worker_env(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update({
        "PYTHONPATH": os.pathsep.join([str(PROJECT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "false",  # a worker that touched Prefect would fail loudly
        "PREFECT_HOME": str(folder / "prefect"),
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
        "DASK_LOGGING__DISTRIBUTED": "warning",
        "MPLCONFIGDIR": str(folder / "matplotlib"),
    })
    return env


def _wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"dask scheduler did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


@contextmanager
def dask_cluster(folder: Path, n_workers: int = 2) -> Iterator[str]:
    """`dask scheduler` plus `n_workers` one-thread `dask worker` processes on 127.0.0.1; yields the address."""
    from distributed import Client

    folder.mkdir(parents=True, exist_ok=True)
    env = _worker_env(folder)
    procs: list[subprocess.Popen] = []
    logs: list = []

    def start(name: str, *args: str) -> subprocess.Popen:
        log = open(folder / f"{name}.log", "w")  # noqa: SIM115 (closed in the finally below)
        logs.append(log)
        proc = subprocess.Popen([sys.executable, "-m", "dask", *args], cwd=PROJECT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        procs.append(proc)
        return proc

    try:
        info = folder / "scheduler.json"
        scheduler = start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                          "--scheduler-file", str(info))
        _wait_for(info, scheduler, folder / "scheduler.log")
        address = json.loads(info.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        for i in range(n_workers):
            start(f"worker{i}", "worker", address, "--name", f"w{i}", "--nthreads", "1", "--no-nanny",
                  "--host", "127.0.0.1", "--no-dashboard", "--local-directory", str(folder / f"w{i}"))
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(n_workers, timeout=90)
        yield address
    finally:  # the workers first (closing, they still talk to the scheduler), then the scheduler
        for group in (procs[1:], procs[:1]):
            for proc in group:
                if proc.poll() is None:
                    proc.terminate()
            for proc in group:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for log in logs:
            log.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[str]:
    with dask_cluster(tmp_path_factory.mktemp("dask")) as address:
        yield address


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[PipelineConfig, Path, Path]:
    """A tiny demo ingested and a one-epoch model trained on it (about 3 s)."""
    root = tmp_path_factory.mktemp("distributed") / "root"
    config = load_config(CONFIGS / "demo.yaml", overrides=TINY)
    ingest(config, RootLayout(root))
    return config, root, Path(train_model(config, RootLayout(root)).model_dir)


def _arrays(uri: str) -> dict[str, np.ndarray]:
    store = PredictionStore.open(uri)
    return {name: np.asarray(store.group[name][:]) for name in ("logits", "embeddings", "consensus")}


def test_prediction_on_the_cluster_writes_the_local_logits(cluster, trained):
    from distributed import Client, get_task_stream

    import tasks.predict

    config, root, model_dir = trained
    uri = RootLayout(root).prediction_uri(config.name)
    local = predict(config, RootLayout(root), model_dir=model_dir)
    assert local.frames_predicted == 1200 and local.complete
    want = _arrays(uri)
    remove_store(uri)

    tasks.predict._cached_model.cache_clear()
    remote_config = load_config(CONFIGS / "demo.yaml", overrides={**TINY, "analyze": {"scheduler": cluster}})
    with Client(cluster, timeout="30s") as client, get_task_stream(client) as stream:
        remote = predict(remote_config, RootLayout(root), model_dir=model_dir)  # the address comes from analyze.scheduler
        on_workers = client.run(lambda: tasks.predict._cached_model.cache_info().currsize)
        prefect_servers = client.run(lambda: "prefect.server.api.server" in sys.modules)
    assert tasks.predict._cached_model.cache_info().currsize == 0, "this process predicted nothing itself"
    ran = [t for t in stream.data if "predict_range" in t["key"]]
    assert len(ran) == 5 and len({t["worker"] for t in ran}) == 2, "five chunks spread over both workers"
    assert sorted(on_workers.values()) == [1, 1] and not any(prefect_servers.values())
    assert remote.frames_predicted == 1200 and remote.complete and remote.version == local.version
    got = _arrays(uri)
    for name in want:
        assert np.array_equal(got[name], want[name]), name


def test_distances_on_the_cluster_equal_the_local_threads(cluster, trained, tmp_path):
    config, root, model_dir = trained
    uri = RootLayout(root).prediction_uri(config.name)
    if not PredictionStore.exists(uri):
        predict(config, RootLayout(root), model_dir=model_dir)
    planted = fill_store(tmp_path / "planted.zarr", LOGITS, GROUPS, chunk_frames=2000)
    for store, chunk in ((PredictionStore.open(uri), 256), (planted, 2000)):
        for metric in ("euclidean", "cosine", "jensenshannon"):
            local = store_distances(store, metric, read_chunk_frames=chunk, keep_partials=False)
            with dask_scheduler(cluster) as kwargs:
                remote = store_distances(store, metric, kwargs, read_chunk_frames=chunk, keep_partials=False)
            assert remote.frames_computed == store.n_frames
            assert np.max(np.abs(remote.matrix - local.matrix)) <= 1e-12 * np.max(local.matrix), metric

    # the analysis task: local threads, then the cluster named in the config (partial sums dropped
    # in between, so the cluster computes them again)
    here = analyze(config, RootLayout(root))
    assert here.scheduler == "threads" and here.distances.frames_computed == 1200
    PredictionStore.open(uri, mode="r+").drop_partials()
    there = analyze(load_config(CONFIGS / "demo.yaml", overrides={**TINY, "analyze": {
        **TINY["analyze"], "scheduler": cluster}}), RootLayout(root))
    assert there.scheduler == cluster and there.distances.frames_computed == 1200
    assert np.max(np.abs(np.array(there.distance_matrix) - np.array(here.distance_matrix))) <= \
        1e-12 * np.max(here.distance_matrix)
    assert there.clusters == here.clusters
