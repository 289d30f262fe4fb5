"""Stores on object storage: `store.uri_prefix: s3://...` against an S3-compatible server (moto in
server mode) started on 127.0.0.1 by the test, with credentials only in the environment.

Results must equal the local-disk run, re-ingesting must change nothing, and the secret must
appear nowhere in what MLflow keeps (params, tags, dataset inputs, artifacts) nor in the logs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import CONFIGS, make_batch

from configs.schema import StoreConfig, load_config
from errors import InputError
from storage.dataset_store import DatasetStore, open_or_create
from storage.integrity import lenient, seal
from storage.layout import RootLayout
from storage.location import remove_store
from storage.prediction_store import PredictionStore
from tasks.analyze import analyze
from tasks.ingest import ingest

BUCKET = "annostyle-test"
SECRET = f"annostyle-secret-{uuid.uuid4().hex}"
KEY_ID = "ANNOSTYLETESTKEYID"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[str]:
    """An S3 server on loopback with an empty bucket; AWS_* variables point at it. Yields `s3://bucket`."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    env = {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start:\n{log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        os.environ.update(env)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir(BUCKET)
        yield f"s3://{BUCKET}"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _keys(url: str) -> list[str]:
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True).find(url.removeprefix("s3://"))


# ------------------------------------------------------------------------------ config
def test_uri_prefix_is_checked_and_names_where_the_stores_go(tmp_path):
    assert StoreConfig(uri_prefix="s3://bucket/some/prefix/").uri_prefix == "s3://bucket/some/prefix"
    assert RootLayout(tmp_path, "s3://bucket/p").dataset_uri("demo") == "s3://bucket/p/datasets/demo.zarr"
    assert RootLayout(tmp_path, "s3://bucket/p").prediction_uri("demo") == "s3://bucket/p/predictions/demo.zarr"
    assert RootLayout(tmp_path, str(tmp_path / "shared")).dataset_uri("demo") == \
        str(tmp_path / "shared" / "datasets" / "demo.zarr")
    assert RootLayout(tmp_path).dataset_uri("demo") == str(tmp_path / "datasets" / "demo.zarr")
    config = tmp_path / "c.yaml"
    for prefix, words in [("s3://KEY:hunter2@bucket/p", "credentials"), ("s3://bucket/p?secret=x", "query"),
                          ("relative/folder", "absolute"), ("nope://bucket", "unknown storage protocol"),
                          ("s3://", "bucket")]:
        config.write_text(f"name: x\nsource: {{kind: demo}}\nstore: {{uri_prefix: '{prefix}'}}\n")
        with pytest.raises(InputError, match=words) as err:
            load_config(config)
        assert "store.uri_prefix" in str(err.value) and "hunter2" not in str(err.value)


# ------------------------------------------------------------------------------ stores
def test_dataset_store_versions_appends_and_recovery_on_s3(s3):
    uri = f"{s3}/unit/datasets/toy.zarr"
    store = open_or_create(uri, StoreConfig(chunk_frames=4), ["a", "b", "c"], None)
    first = make_batch(["s0", "s1"], [3, 2], ["A", "B"], [0, 1, 1, -1, 2, 2, 0, 0, -1, 1], gold=[0, 1, 2, 0, 1])
    v1 = store.append(first).version
    assert store.append(first).status == "unchanged"
    extra = make_batch(["s0", "s2"], [3, 2], ["C"], [2, -1, 0, 1, 1], features=False)
    extra.features = np.concatenate([first.features[:3], np.ones((2, 3), np.float32)])
    assert store.append(extra).touched_frames == 3  # labels on existing frames: history kept on S3
    latest, old = DatasetStore.open(uri), DatasetStore.open(uri, version=v1)
    assert latest.n_frames == 7 and latest.read_labels()[:3, 2].tolist() == [2, -1, 0]
    np.testing.assert_array_equal(old.read_labels(), first.labels)

    # an append that died half way (arrays grown, marker set, no commit) reads as before and is rolled back
    # (marker first and sealed, as the real writer does: an unsealed edit would be damage)
    group = DatasetStore.open(uri, mode="r+").group
    attrs = dict(group.attrs)
    group.attrs.put(seal({**attrs, "pending": {"batch": 2, "hash": "crashed", "history": False}}))
    with lenient(group):
        group["labels"].resize((9, 3))
        group["labels"][7:9] = 1
    assert DatasetStore.open(uri).n_frames == 7
    third = make_batch(["s3"], [1], ["A"], [2], seed=5)
    assert DatasetStore.open(uri, mode="r+").append(third).status == "appended"
    final = DatasetStore.open(uri)
    assert final.n_frames == 8 and final.read_labels()[7].tolist() == [2, -1, -1]
    assert final.pending is None and group["labels"].shape == (8, 3)

    remove_store(uri)
    assert not DatasetStore.exists(uri) and _keys(f"{s3}/unit/datasets") == []


def test_label_dataset_on_s3_equals_the_local_run(s3, tmp_path):
    overrides = {"analyze": {"figures": False}}
    local = load_config(CONFIGS / "bluebirds.yaml", overrides=overrides)
    remote = load_config(CONFIGS / "bluebirds.yaml", overrides={**overrides, "store": {"uri_prefix": f"{s3}/labels"}})
    here, there = tmp_path / "local", tmp_path / "remote"
    at_here, at_there = RootLayout(here, local.store.uri_prefix), RootLayout(there, remote.store.uri_prefix)
    a, b = ingest(local, at_here), ingest(remote, at_there)
    assert b.store == f"{s3}/labels/datasets/bluebirds.zarr" and b.batch_status == "appended"
    assert a.version == b.version and a.n_labels == b.n_labels
    assert not (there / "datasets").exists()
    assert ingest(remote, at_there).batch_status == "unchanged"
    x, y = analyze(local, at_here), analyze(remote, at_there)
    assert y.stores.dataset.uri == b.store and y.method == "labels"
    assert y.distance_matrix == x.distance_matrix and y.clusters == x.clusters
    assert Path(y.outputs).is_relative_to(there)  # analysis outputs stay local, under the root


# ----------------------------------------------------------------------------- pipeline
def _config(folder: Path, prefix: str | None) -> Path:
    store = f"\nstore: {{uri_prefix: '{prefix}', chunk_frames: 512}}" if prefix else "\nstore: {chunk_frames: 512}"
    path = folder / "demo.yaml"
    path.write_text(textwrap.dedent("""\
        name: demo
        source: {kind: demo, size: demo, seed: 0, n_sequences: 6, sequence_length: 200, n_annotators: 6}
        train:
          threads: 1
          baselines: []
          optim: {max_epochs: 1}
          encoder: {dim: 16, temporal: {channels: 8, blocks: 1, context_frames: 9}}
        predict: {chunk_frames: 256}
        analyze: {umap: false, tsne: false, figures: false}""") + store + "\n")
    return path


def _demo_batch(folder: Path) -> Path:
    """Sequences 6 and 7 of the tiny demo (the pipeline holds the first 6) as a batch file."""
    from configs.schema import DemoSource
    from storage.batch import Batch
    from tasks.demo import generate_batch
    from tasks.readers.table import write_table_batch

    full = generate_batch(DemoSource(kind="demo", n_sequences=8, sequence_length=200, n_annotators=6))
    return write_table_batch(Batch(
        sequence_names=full.sequence_names[6:], sequence_lengths=full.sequence_lengths[6:],
        annotators=full.annotators, classes=full.classes, labels=full.labels[1200:], gold=full.gold[1200:],
        features=full.features[1200:], sources={"labels": "test batch"}), folder)


def _mlflow_text(root: Path, tmp: Path) -> str:
    """Every param, tag, dataset input and artifact of every run in the root's MLflow store, as text."""
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root.resolve() / 'mlflow.db'}")
    parts: list[str] = []
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) >= 5  # the parent and one nested run per stage
    for run in runs:
        parts += [json.dumps(run.data.params), json.dumps(run.data.tags)]
        parts += [i.dataset.source for i in run.inputs.dataset_inputs]
        folder = Path(client.download_artifacts(run.info.run_id, "", str(tmp / run.info.run_id)))
        parts += [p.read_bytes().decode("utf-8", "replace") for p in folder.rglob("*") if p.is_file()]
    return "\n".join(parts)


@pytest.mark.slow
def test_pipeline_on_s3_equals_local_reuses_everything_and_keeps_the_secret_out_of_mlflow(
        prefect_harness, s3, tmp_path, caplog, capfd):
    from flows.pipeline import pipeline_flow
    from flows.reprocess import reprocess_flow

    prefix = f"{s3}/pipeline"
    runs = {}
    for name, where in (("local", None), ("s3", prefix)):
        folder = tmp_path / name
        folder.mkdir()
        runs[name] = (folder / "root", pipeline_flow(str(_config(folder, where)), str(folder / "root")))
    (here, local), (there, remote) = runs["local"], runs["s3"]
    assert remote.prediction_store == f"{prefix}/predictions/demo.zarr"
    assert {k for k in _keys(prefix) if k.endswith("zarr.json") and k.count("/") == 4} == {
        f"{BUCKET}/pipeline/datasets/demo.zarr/zarr.json", f"{BUCKET}/pipeline/predictions/demo.zarr/zarr.json"}
    assert not (there / "datasets").exists() and not (there / "predictions").exists()
    assert (there / "models").is_dir() and (there / "mlflow.db").is_file()

    # the same data, model, predictions and clusters as on local disk
    assert remote.version == local.version and remote.clusters == local.clusters
    mine, theirs = PredictionStore.open(local.prediction_store), PredictionStore.open(remote.prediction_store)
    assert theirs.complete and theirs.dataset_store == f"{prefix}/datasets/demo.zarr"
    for name in ("logits", "embeddings", "consensus"):
        np.testing.assert_array_equal(theirs.group[name][:], mine.group[name][:])
    summaries = [json.loads((RootLayout(r).analysis_dir("demo") / "summary.json").read_text()) for r in (here, there)]
    assert summaries[1]["distance_matrix"] == summaries[0]["distance_matrix"]

    # a rerun finds the stores on S3 unchanged and reuses every stage
    again = pipeline_flow(str(tmp_path / "s3" / "demo.yaml"), str(there))
    assert again.stages["ingest"].batch_status == "unchanged"
    assert {again.stages[s].status for s in ("train", "predict", "analyze")} == {"reused"}

    # a new batch: the stores on S3 grow by a segment, only its frames are predicted and summed
    batch = _demo_batch(tmp_path / "batch")
    extended = {name: reprocess_flow(str(tmp_path / name / "demo.yaml"), str(r), str(batch))
                for name, (r, _) in runs.items()}
    assert extended["s3"].frames_predicted == 400 and extended["s3"].stages["train"].status == "skipped"
    assert PredictionStore.open(remote.prediction_store).segments == [(0, 1200), (1200, 1600)]
    assert extended["s3"].to_json()["partial_sums"]["partials_reused"] == [[0, 1200]]
    assert extended["s3"].distance_matrix == extended["local"].distance_matrix

    # the store URIs are recorded; the credentials are not, anywhere
    text = _mlflow_text(there, tmp_path / "artifacts")
    assert f"{prefix}/datasets/demo.zarr" in text and f"{prefix}/predictions/demo.zarr" in text
    assert SECRET not in text and KEY_ID not in text
    for path in there.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    out, err = capfd.readouterr()
    assert SECRET not in out + err + caplog.text
