"""Damage to the prediction store is an error naming the file, never an answer.

For every array (logits, embeddings, consensus, annotator_embeddings, written, partials/*): a
deleted chunk, a flipped byte, a truncated chunk; for the metadata: edited attributes
(n_frames, annotators, segments and the rest), an edited array zarr.json, a removed digest, a
zarr.json that does not parse. Each case is applied to a copy of one small complete store and
then read the ways the project reads it (open, every array, the partial sums, the distances
through Dask, the npz export): each must raise `DamagedStore` naming the damaged file, and
`PredictionStore.verify` must list that file. The resume record must not call a damaged chunk
complete: `resume_or_create` marks it unwritten and a resumed predict rewrites it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from test_distances import ATTRS

from configs.analyze import PredictConfig
from errors import DamagedStore, InputError
from storage.prediction_store import PredictionStore
from tasks.distances import store_distances

ANNOTATORS = ["ann0", "ann1", "ann2"]
CLASSES = ["a", "b", "c"]
N, CHUNK = 2500, 1000
CONFIG = PredictConfig(chunk_frames=CHUNK)
PARTIAL = "partials/gram_0_2500"

# one chunk file per array: the second chunk along frames where there is one
CHUNK_FILES = {
    "logits": "logits/c/1/0/0",
    "embeddings": "embeddings/c/1/0",
    "consensus": "consensus/c/1/0",
    "annotator_embeddings": "annotator_embeddings/c/0/0",
    "written": "written/c/1",
    "partials": f"{PARTIAL}/c/0/0",
}


def rows(start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    f = np.arange(start, stop, dtype=np.float32)[:, None]
    logits = np.stack([np.sin(f / 40 + a) * 2 + np.arange(3) * a for a in range(3)], axis=1).astype(np.float32)
    return logits, np.repeat(f, 4, axis=1) / 1000, np.full((stop - start, 3), 1 / 3, np.float32)


def build(uri: Path, partials: bool = True) -> PredictionStore:
    store = PredictionStore.create(uri, N, ANNOTATORS, CLASSES, 4, 2, CONFIG, ATTRS)
    for start, stop in store.pending_chunks():
        store.write_chunk(start, *rows(start, stop))
    store.set_annotator_embeddings(np.arange(6, dtype=np.float32).reshape(3, 2))
    if partials:
        store_distances(PredictionStore.open(uri, mode="r+"))  # keeps partials/gram_0_2500
    return store


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, dict]:
    uri = tmp_path_factory.mktemp("pristine") / "p.zarr"
    build(uri)
    return uri, read_all(uri)


def read_all(uri: Path) -> dict:
    """Everything a reader of the store gets: open, each array, the partials, the distances, an export."""
    store = PredictionStore.open(uri)
    n = store.n_frames
    out = {
        "logits": np.asarray(store.logits[:n]),
        "embeddings": np.asarray(store.embeddings[:n]),
        "consensus": np.asarray(store.consensus.get_orthogonal_selection((np.arange(0, n, 7),))),
        "annotator_embeddings": store.annotator_embeddings(),
        "written": store.written_counts(),
        "partials": store.partials("gram"),
        "complete": store.complete,
        "distances": store_distances(store, keep_partials=False).matrix,
    }
    store.export_npz({}, np.array([0, 1200, n]), ["s0", "s1"])
    return out


def fresh(pristine_uri: Path, tmp_path: Path, name: str) -> Path:
    uri = tmp_path / name / "p.zarr"
    shutil.copytree(pristine_uri, uri)
    return uri


def delete(path: Path) -> None:
    path.unlink()


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x5A
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGE: dict[str, Callable[[Path], None]] = {"deleted": delete, "flipped": flip, "truncated": truncate}


def edit_json(path: Path, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(uri: Path) -> None:
        meta = json.loads((uri / path).read_text())
        change(meta)
        (uri / path).write_text(json.dumps(meta))
    return apply


def attribute(key: str, value) -> Callable[[Path], None]:
    return edit_json(Path("zarr.json"), lambda meta: meta["attributes"].__setitem__(key, value))


METADATA: dict[str, tuple[Callable[[Path], None], str]] = {
    # case: (damage, the file the error must name)
    "n_frames": (attribute("n_frames", 2000), "zarr.json"),
    "annotators": (attribute("annotators", ["ann1", "ann0", "ann2"]), "zarr.json"),
    "segments": (attribute("segments", [[0, 2000], [2000, 2500]]), "zarr.json"),
    "classes": (attribute("classes", ["b", "a", "c"]), "zarr.json"),
    "dataset_version": (attribute("dataset_version", "v9"), "zarr.json"),
    "model_run_id": (attribute("model_run_id", "run9"), "zarr.json"),
    "chunk_frames": (attribute("chunk_frames", 500), "zarr.json"),
    "digest removed": (edit_json(Path("zarr.json"), lambda meta: meta["attributes"].pop("digest")), "zarr.json"),
    "zarr.json truncated": (lambda uri: truncate(uri / "zarr.json"), "zarr.json"),
    "zarr.json deleted": (lambda uri: delete(uri / "zarr.json"), "zarr.json"),
    "logits shape": (edit_json(Path("logits/zarr.json"), lambda meta: meta.__setitem__("shape", [2000, 3, 3])),
                     "logits/zarr.json"),
    "logits dtype": (edit_json(Path("logits/zarr.json"), lambda meta: meta.__setitem__("data_type", "float32")),
                     "logits/zarr.json"),
    "logits checksum codec removed": (
        edit_json(Path("logits/zarr.json"), lambda meta: meta.__setitem__("codecs", meta["codecs"][:-1])),
        "logits/zarr.json"),
    "consensus zarr.json deleted": (lambda uri: delete(uri / "consensus/zarr.json"), "consensus/zarr.json"),
    "embeddings zarr.json truncated": (lambda uri: truncate(uri / "embeddings/zarr.json"), "embeddings/zarr.json"),
    "partial start": (edit_json(Path(PARTIAL) / "zarr.json", lambda meta: meta["attributes"].__setitem__("start", 100)),
                      f"{PARTIAL}/zarr.json"),
    "partial annotators": (edit_json(Path(PARTIAL) / "zarr.json",
                                     lambda meta: meta["attributes"].__setitem__("annotators", ["ann2", "ann1", "ann0"])),
                           f"{PARTIAL}/zarr.json"),
    "partial zarr.json truncated": (lambda uri: truncate(uri / PARTIAL / "zarr.json"), f"{PARTIAL}/zarr.json"),
}


def detected(uri: Path, file: str) -> bool:
    """Every read raises DamagedStore naming `file` (never an answer), and verify lists it."""
    with pytest.raises(DamagedStore) as caught:
        read_all(uri)
    err = caught.value
    named = err.file == f"{uri}/{file}" and str(uri) in str(err)
    report = PredictionStore.verify(uri)
    listed = {d.file for d in report.damaged} | {d.file for a in report.arrays for d in a.damaged}
    return named and not report.ok and f"{uri}/{file}" in listed


def test_pristine_store_reads_and_verifies_clean(pristine):
    uri, expected = pristine
    report = PredictionStore.verify(uri)
    assert report.ok and report.exists and report.kind == "predictions"
    chunks = {a.name: a.chunks for a in report.arrays}
    assert chunks == {"logits": 3, "embeddings": 3, "consensus": 3, "annotator_embeddings": 1, "written": 3,
                      PARTIAL: 1}
    assert expected["complete"] and list(expected["partials"]) == [(0, 2500)]
    assert not PredictionStore.verify(uri.parent / "nothing.zarr").exists


def test_every_damaged_chunk_is_an_error_naming_the_file(pristine, tmp_path, capsys):
    uri, _ = pristine
    tried, found, missed = 0, 0, []
    for array, key in CHUNK_FILES.items():
        for how, damage in DAMAGE.items():
            copy = fresh(uri, tmp_path, f"{array}-{how}")
            damage(copy / key)
            tried += 1
            if detected(copy, key):
                found += 1
            else:
                missed.append(f"{how} {key}")
    with capsys.disabled():
        print(f"\nprediction store chunk damage: {found} detected / {tried} tried")
    assert not missed and tried == 18


def test_every_edited_or_broken_metadata_file_is_an_error_naming_it(pristine, tmp_path, capsys):
    uri, _ = pristine
    tried, found, missed = 0, 0, []
    for case, (damage, file) in METADATA.items():
        copy = fresh(uri, tmp_path, case.replace(" ", "-"))
        damage(copy)
        tried += 1
        if detected(copy, file):
            found += 1
        else:
            missed.append(case)
    with capsys.disabled():
        print(f"\nprediction store metadata damage: {found} detected / {tried} tried")
    assert not missed


def test_a_flipped_logits_chunk_fails_the_dask_distance_pass(tmp_path):
    uri = tmp_path / "p.zarr"
    build(uri, partials=False)
    flip(uri / "logits/c/2/0/0")
    store = PredictionStore.open(uri)
    assert store.complete  # the record is intact; the read is what checks the chunk
    with pytest.raises(DamagedStore, match="logits/c/2/0/0") as caught:
        store_distances(store, keep_partials=False)
    assert isinstance(caught.value, InputError) and caught.value.field == "logits"


def test_resume_does_not_call_a_damaged_chunk_complete(pristine, tmp_path):
    uri, expected = pristine
    cases = {"logits/c/1/0/0": flip, "embeddings/c/0/0": delete, "consensus/c/2/0": truncate, "written/c/1": flip}
    for key, damage in cases.items():
        copy = fresh(uri, tmp_path, key.replace("/", "-"))
        damage(copy / key)
        store = PredictionStore.resume_or_create(copy, N, ANNOTATORS, CLASSES, 4, 2, CONFIG, ATTRS)
        index = int(key.split("/")[2])
        bounds = (index * CHUNK, min((index + 1) * CHUNK, N))
        assert store.pending_chunks() == [bounds], key
        assert not store.partials("gram")  # the sums over the damaged frames went with it
        store.write_chunk(bounds[0], *rows(*bounds))
        again = read_all(copy)
        for name in ("logits", "embeddings", "consensus", "written", "distances"):
            assert np.array_equal(again[name], expected[name]), (key, name)
        assert PredictionStore.verify(copy).ok


def test_a_lost_chunk_of_a_partly_written_chunk_is_not_zero_filled(tmp_path):
    uri = tmp_path / "p.zarr"
    store = PredictionStore.create(uri, N, ANNOTATORS, CLASSES, 4, 2, CONFIG, ATTRS)
    store.write_chunk(0, *rows(0, 300))
    (uri / "embeddings/c/0/0").unlink()
    with pytest.raises(DamagedStore, match="embeddings/c/0/0"):
        store.write_chunk(300, *rows(300, 1000))
    resumed = PredictionStore.resume_or_create(uri, N, ANNOTATORS, CLASSES, 4, 2, CONFIG, ATTRS)
    assert resumed.pending_chunks()[0] == (0, 1000)


def test_an_unsealed_partial_is_an_interrupted_write_recomputed(pristine, tmp_path):
    uri, expected = pristine
    copy = fresh(uri, tmp_path, "unsealed")
    edit_json(Path(PARTIAL) / "zarr.json", lambda meta: meta.__setitem__(
        "attributes", {k: v for k, v in meta["attributes"].items() if k not in ("digest", "shape", "dtype")}))(copy)
    store = PredictionStore.open(copy, mode="r+")
    assert store.partials("gram") == {}
    result = store_distances(store)
    assert result.computed == [(0, 2500)] and np.allclose(result.matrix, expected["distances"], rtol=1e-12)
    assert list(PredictionStore.open(copy).partials("gram")) == [(0, 2500)] and PredictionStore.verify(copy).ok


@pytest.mark.parametrize("case", ["n_frames", "logits dtype", "zarr.json truncated"])
def test_predict_replaces_a_store_whose_metadata_fails_its_check(pristine, tmp_path, case):
    uri, expected = pristine
    copy = fresh(uri, tmp_path, "replaced")
    METADATA[case][0](copy)
    store = PredictionStore.resume_or_create(copy, N, ANNOTATORS, CLASSES, 4, 2, CONFIG, ATTRS)
    assert store.missing_ranges() == [(0, N)]
    for start, stop in store.pending_chunks():
        store.write_chunk(start, *rows(start, stop))
    store.set_annotator_embeddings(np.arange(6, dtype=np.float32).reshape(3, 2))
    assert np.array_equal(read_all(copy)["distances"], expected["distances"])
