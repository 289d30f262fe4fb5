"""Predict: run the trained model over the dataset store and fill the prediction store.

Every annotator's logits for every frame (also frames that annotator never saw), the encoder
embedding and the consensus probabilities, written chunk by chunk. A killed export resumes
from the chunks it had not finished; chunks can be spread over a Dask cluster
(`analyze.scheduler` or `--scheduler tcp://host:port`): each Dask task gets the model folder,
the two store URIs and a frame range, never arrays, and writes its chunk itself. Workers must
see the model folder (under the root: a shared filesystem) and the stores (a shared folder or
object storage, `store.uri_prefix`).
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache
from pathlib import Path

from configs.schema import PipelineConfig
from errors import InputError
from storage.dataset_store import DatasetStore
from storage.layout import RootLayout
from storage.model_store import RunFolder, model_files, read_spec
from storage.prediction_store import PredictionStore
from storage.results.predict import PredictResult
from tasks.distances import dask_scheduler
from tasks.model import TrainedModel, load_model
from tasks.train import train_key

log = logging.getLogger(__name__)


def model_dir_for(layout: RootLayout, config: PipelineConfig, version: str) -> Path:
    """Where training put the model for this dataset version and train config."""
    return RunFolder(layout.run_dir(config.name, train_key(version, config.train))).model_dir


@lru_cache(maxsize=4)
def _cached_model(model_dir: str, stamp: tuple[int, ...]) -> TrainedModel:
    return load_model(Path(model_dir))


def _model(model_dir: str) -> TrainedModel:
    """The model in a folder, loaded once per process (a long-lived Dask worker included), and
    loaded again when its files change (a model retrained into the same folder)."""
    stats = [path.stat() for path in model_files(Path(model_dir))]
    return _cached_model(model_dir, tuple(x for st in stats for x in (st.st_mtime_ns, st.st_size)))


def predict_range(model_dir: str, dataset: str, prediction: str, start: int, stop: int) -> int:
    """Predict frames [start, stop) and write them; runs in-process or on a Dask worker."""
    model = _model(model_dir)
    store = DatasetStore.open(dataset)
    out = model.predict(store, start, stop)
    PredictionStore.open(prediction, mode="r+").write_chunk(start, out["logits"], out["embeddings"],
                                                           out["consensus"])
    return stop - start


def predict(config: PipelineConfig, layout: RootLayout, model_dir: Path | None = None,
            export_npz: bool = False, scheduler: str | None = None) -> PredictResult:
    """Fill the config's prediction store (`layout.prediction_uri`) from the model trained on the
    latest dataset version (or the one in `model_dir`); `scheduler` overrides `analyze.scheduler`.

    Resumes a store made by the same model for the same data; frames already written are not
    predicted again (`frames_predicted` says how many were, `frames_per_s` how fast).
    """
    started = time.perf_counter()
    store = DatasetStore.open(layout.dataset_uri(config.name))
    if not store.has_features:
        raise InputError(store.uri, "features", False,
                         "label-only datasets have no model to predict with; `annostyle analyze` uses the labels")
    model_dir = Path(model_dir) if model_dir else model_dir_for(layout, config, store.version)
    model = load_model(model_dir)
    if model.annotators != store.annotators[: len(model.annotators)]:
        raise InputError(model_dir, "annotators", model.annotators, "the model's annotators differ from the store's")
    attrs = {"dataset_store": store.uri, "dataset_version": store.version,
             "model_run_id": model.model_run_id or read_spec(model_dir).key, "class_names": model.class_names,
             "model_dir": str(model_dir), "head": model.head}
    uri = layout.prediction_uri(config.name)
    pstore = PredictionStore.resume_or_create(
        uri, store.n_frames, model.annotators, model.classes, model.net.encoder.dim,
        model.annotator_embeddings.shape[1], config.predict, attrs)
    pstore.set_annotator_embeddings(model.annotator_embeddings)
    todo = pstore.pending_chunks()
    done = write_ranges(str(model_dir), store.uri, uri, todo, scheduler or config.analyze.scheduler)
    pstore = PredictionStore.open(uri)
    npz = None
    if export_npz:
        npz = pstore.export_npz(layout.npz_export_dir(config.name), store.offsets, store.sequence_names.tolist())
    seconds = time.perf_counter() - started
    return PredictResult.model_validate({
        **pstore.summary(), "dataset": config.name, "frames_predicted": done,
        "frames_reused": store.n_frames - done, "model_dir": str(model_dir), "head": model.head,
        "frames_per_s": done / seconds if done else None, "npz": npz})


def write_ranges(model_dir: str, dataset: str, prediction: str, ranges: list[tuple[int, int]],
                 scheduler: str | None = None) -> int:
    """Predict and write each frame range: in this process (None, "threads", "sync"), on a
    `LocalCluster` ("local-cluster") or on the Dask scheduler at an address (`tcp://host:8786`).

    One Dask task per range (the pending chunks of the prediction store), so workers write
    disjoint chunks. Logs progress with rate and ETA; returns the number of frames written.
    """
    total = sum(b - a for a, b in ranges)
    if not total:
        return 0
    t0 = time.perf_counter()
    done = 0

    def report() -> None:
        rate = done / max(time.perf_counter() - t0, 1e-9)
        log.info("predicted %d/%d frames (%.0f frames/s, ETA %.0f s)", done, total, rate, (total - done) / rate)

    with dask_scheduler(scheduler) as compute_kwargs:
        client = compute_kwargs["scheduler"]
        if isinstance(client, str):
            for a, b in ranges:
                done += predict_range(model_dir, dataset, prediction, a, b)
                report()
            return done
        from distributed import as_completed

        futures = [client.submit(predict_range, model_dir, dataset, prediction, a, b, pure=False)
                   for a, b in ranges]
        for future in as_completed(futures):
            done += future.result()
            report()
    return done
