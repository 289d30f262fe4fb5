"""The prediction store: every annotator's predictions for every frame, as a Zarr v3 group.

Layout (the frame arrays share one chunk length along frames and are Blosc-compressed):

    logits                (n_frames, n_annotators, n_classes) float16 | float32
                          every annotator's logits for every frame, also frames it never saw
    embeddings            (n_frames, d) float32 | float16    the encoder's embedding of the frame
    consensus             (n_frames, n_classes) float32       consensus class probabilities
    annotator_embeddings  (n_annotators, e) float32           the head's learned annotator
                          embedding table (rows in `annotators` order)
    written               (n_chunks,) int64, one key per chunk: how many frames of the chunk,
                          counted from its start, are written (the resume record)
    partials/<stat>_<start>_<stop>
                          (n_annotators, n_annotators) float64 sums over frames [start, stop)
                          that annotator distances are made of (see tasks.distances)
    zarr.json             the group attributes below

Group attributes: `format` ("annostyle.predictions"), `format_version`, `dataset_store` (URI)
and `dataset_version` (the dataset version the frames belong to), `model_run_id` (the MLflow
run of the model), `annotators`, `classes`, `class_names`, `offsets_source` (where sequence
boundaries come from: the dataset store's `offsets` array at `dataset_version`), `n_frames`,
`chunk_frames`, `segments` (the frame ranges added by `create` and each `extend`, one per
dataset batch), `config` (the PredictConfig), `created`, and `extra` (whatever else the writer
recorded). Frame i is frame i of the dataset store; sequence s is frames
offsets[s]:offsets[s + 1].

Writing and resuming: `write_chunk` writes the arrays first and then the chunk's `written`
key (one small file, atomic on a local store: about 0.9 ms per chunk, where rewriting the
group attributes per chunk grows with the store and races between writers); a killed export
leaves at most the chunk it was writing unrecorded, and `missing_ranges()` lists exactly what
is left. Rewriting frames drops the partial sums that cover them. A new dataset batch with the
model unchanged: `extend` (or `resume_or_create`, which extends when the same model made the
store) adds a segment of unwritten frames, so only those are predicted and summed.

How damage is detected (`storage.integrity`): every chunk of every array (partials included)
ends with a CRC32C (Zarr 3's `crc32c` codec) and every chunk is written, so a read through the
store (`open`) that meets an absent, truncated or altered chunk file raises
`errors.DamagedStore` naming the store, the array and the file, never a fill value. The group
attributes are sealed with a digest of themselves (checked on open) and record a digest of
each array's metadata but its growing frame axis (checked on the array's first use): an edited
`n_frames`, `annotators`, `segments` or codec chain is an error. Each partial carries its own seal (an
unsealed one is an interrupted write: not used, replaced). `verify` checks every file without
decoding; `resume_or_create` marks chunks that fail their check as unwritten, so a resumed
predict writes them again instead of calling them complete.

Export: `export_npz` writes the MABe notebook's layout, per sequence and per annotator the
bytes of `np.savez_compressed(logits)`, read back with `np.load(io.BytesIO(b))["arr_0"]`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import sys
import threading
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import numcodecs.blosc
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from configs.analyze import PredictConfig
from errors import DamagedStore, InputError
from storage import integrity
from storage.dataset_store import blosc
from storage.files import atomic_write_bytes
from storage.location import is_local, local_path
from storage.results.predict import NpzExport
from storage.results.verify import ArrayReport, DamagedFile, StoreReport

log = logging.getLogger(__name__)

FORMAT = "annostyle.predictions"
FORMAT_VERSION = 2  # 2: chunk checksums, sealed attributes
TARGET_CHUNK_BYTES = 8 << 20
FRAME_ARRAYS = ("logits", "embeddings", "consensus")
ARRAYS = (*FRAME_ARRAYS, "annotator_embeddings", "written")
REQUIRED_ATTRS = ("dataset_store", "dataset_version", "model_run_id")


def auto_chunk_frames(n_annotators: int, n_classes: int, dtype: str) -> int:
    """A power of 2 of frames holding about 8 MiB of logits (between 1,024 and 1,048,576)."""
    per_frame = n_annotators * n_classes * np.dtype(dtype).itemsize
    frames = 2 ** int(math.floor(math.log2(max(1, TARGET_CHUNK_BYTES // max(per_frame, 1)))))
    return int(min(max(frames, 1024), 1 << 20))


def merge_ranges(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, non-empty ranges with touching or overlapping ones merged."""
    out: list[list[int]] = []
    for start, stop in sorted((int(a), int(b)) for a, b in ranges if b > a):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], stop)
        else:
            out.append([start, stop])
    return [(a, b) for a, b in out]


def subtract_ranges(ranges: Sequence[tuple[int, int]], minus: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Parts of `ranges` not covered by `minus`."""
    out: list[tuple[int, int]] = []
    cuts = merge_ranges(minus)
    for start, stop in merge_ranges(ranges):
        pos = start
        for a, b in cuts:
            if b <= pos or a >= stop:
                continue
            if a > pos:
                out.append((pos, a))
            pos = max(pos, b)
        if pos < stop:
            out.append((pos, stop))
    return out


class PredictionStore:
    """A prediction store opened for reading (`mode="r"`) or writing (`"r+"`).

    Opening checks the group attributes against their digest; the first use of an array checks
    its metadata against the digest recorded at creation; every chunk read checks the chunk's
    CRC32C and that it exists (`storage.integrity`): damage is `errors.DamagedStore`, never data.

    >>> store = PredictionStore.create(uri, n_frames, annotators, classes, 64, 8,
    ...                                PredictConfig(), {"dataset_store": ..., "dataset_version": ...,
    ...                                                  "model_run_id": ...})  # doctest: +SKIP
    >>> for start, stop in store.pending_chunks():                              # doctest: +SKIP
    ...     store.write_chunk(start, logits, embeddings, consensus)
    """

    def __init__(self, group: zarr.Group, uri: str) -> None:
        self.group = group
        self.uri = uri
        self.attrs: dict[str, Any] = dict(group.attrs)  # JSON boundary: the group attributes (zarr.json)
        if self.attrs.get("format") != FORMAT and integrity.DIGEST not in self.attrs:
            raise InputError(uri, "format", self.attrs.get("format"), "not an annostyle prediction store")
        if integrity.DIGEST not in self.attrs:
            raise DamagedStore(self._file("zarr.json"), "manifest", None,
                               "the attributes carry no digest (a store written before chunk checksums, or the "
                               "digest was removed): run `annostyle predict` again to rewrite it")
        integrity.check_seal(self.attrs, self._file("zarr.json"))
        if self.attrs.get("format") != FORMAT:
            raise InputError(uri, "format", self.attrs.get("format"), "not an annostyle prediction store")
        self._arrays: dict[str, zarr.Array] = {}  # opened and checked on first use (`_array`)

    def _file(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{key}"

    def _open_array(self, name: str) -> zarr.Array:
        """Open an array and check its metadata against the recorded digest and the committed counts."""
        array = integrity.checked_node(self.group, name, "array")
        file = self._file(f"{name}/zarr.json")
        digest = integrity.array_metadata_digest(array, _fixed_axes(name))
        if (self.attrs.get("arrays") or {}).get(name) != digest:
            raise DamagedStore(file, name, digest, "the array's metadata does not match the digest the store recorded")
        length = {"written": _n_chunks(self.n_frames, self.chunk_frames)}.get(name, self.n_frames)
        if name != "annotator_embeddings" and array.shape[0] < length:
            raise DamagedStore(file, name, array.shape[0],
                               f"the array is shorter than the {length} entries the attributes commit")
        return array

    # ----------------------------------------------------------------- opening
    @classmethod
    def create(
        cls,
        uri: str | Path,
        n_frames: int,
        annotators: Sequence[str],
        classes: Sequence[str],
        d_embedding: int,
        d_annotator_embedding: int,
        config: PredictConfig,
        attrs: Mapping[str, Any],
        overwrite: bool = False,
    ) -> PredictionStore:
        """Create an empty store for `n_frames` frames (fill it with `write_chunk`).

        `attrs` must name `dataset_store`, `dataset_version` and `model_run_id`; it may give
        `class_names` and `offsets_source`; other keys are kept under `extra`.
        """
        uri = str(uri)
        missing = [k for k in REQUIRED_ATTRS if k not in attrs]
        if missing:
            raise ValueError(f"prediction store attrs need {missing}")
        if n_frames < 0 or not annotators or not classes:
            raise ValueError("a prediction store needs n_frames >= 0, annotators and classes")
        if len(set(annotators)) != len(annotators):
            raise ValueError("duplicate annotator names")
        n_ann, n_cls = len(annotators), len(classes)
        chunk = config.chunk_frames or auto_chunk_frames(n_ann, n_cls, config.dtype)
        if is_local(uri):
            os.makedirs(local_path(uri).parent, exist_ok=True)
        group = integrity.open_checked_group(uri, mode="w" if overwrite else "w-")
        codecs = integrity.compressors(blosc(config.codec))
        made = {
            "logits": group.create_array("logits", shape=(n_frames, n_ann, n_cls), dtype=config.dtype,
                                         chunks=(chunk, n_ann, n_cls), fill_value=0.0, compressors=codecs,
                                         dimension_names=["frame", "annotator", "class"]),
            "embeddings": group.create_array("embeddings", shape=(n_frames, d_embedding),
                                             dtype=config.embedding_dtype, chunks=(chunk, d_embedding),
                                             fill_value=0.0, compressors=codecs,
                                             dimension_names=["frame", "feature"]),
            "consensus": group.create_array("consensus", shape=(n_frames, n_cls), dtype="float32",
                                            chunks=(chunk, n_cls), fill_value=0.0, compressors=codecs,
                                            dimension_names=["frame", "class"]),
            "annotator_embeddings": group.create_array("annotator_embeddings", shape=(n_ann, d_annotator_embedding),
                                                       dtype="float32", chunks=(n_ann, d_annotator_embedding),
                                                       fill_value=0.0, compressors=codecs,
                                                       dimension_names=["annotator", "feature"]),
            "written": group.create_array("written", shape=(_n_chunks(n_frames, chunk),), dtype="int64",
                                          chunks=(1,), fill_value=0, compressors=integrity.compressors(None)),
        }
        for name in ("written", "annotator_embeddings"):  # every chunk of these exists: an absent one is damage
            made[name][:] = 0
        known = {*REQUIRED_ATTRS, "class_names", "offsets_source"}
        dataset_store, version = str(attrs["dataset_store"]), str(attrs["dataset_version"])
        digests = {name: integrity.array_metadata_digest(array, _fixed_axes(name)) for name, array in made.items()}
        group.attrs.put(integrity.seal({
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "dataset_store": dataset_store,
            "dataset_version": version,
            "model_run_id": str(attrs["model_run_id"]),
            "annotators": list(annotators),
            "classes": list(classes),
            "class_names": list(attrs.get("class_names") or classes),
            "offsets_source": attrs.get("offsets_source") or f"{dataset_store}#offsets@{version}",
            "n_frames": int(n_frames),
            "chunk_frames": int(chunk),
            "segments": [[0, int(n_frames)]] if n_frames else [],
            "config": config.model_dump(mode="json"),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "extra": {k: v for k, v in attrs.items() if k not in known},
            "arrays": digests,
        }))
        return cls(group, uri)

    @classmethod
    def open(cls, uri: str | Path, mode: Literal["r", "r+"] = "r") -> PredictionStore:
        """Open a store, checking its attributes and array metadata (DamagedStore if they fail)."""
        uri = str(uri)
        try:
            group = integrity.open_checked_group(uri, mode=mode)
        except FileNotFoundError as err:
            lost = _lost_manifest(uri)
            if lost is not None:
                raise lost from err
            raise InputError(uri, None, uri, "no prediction store here (run `annostyle predict` first)") from err
        return cls(group, uri)

    @classmethod
    def exists(cls, uri: str | Path) -> bool:
        """A prediction store is at `uri` (also a damaged one: opening it says what is wrong)."""
        try:
            group = integrity.open_checked_group(str(uri), mode="r")
        except FileNotFoundError:
            return False
        except DamagedStore:
            return True
        attrs = dict(group.attrs)  # JSON boundary: the group attributes
        return attrs.get("format") == FORMAT or integrity.DIGEST in attrs

    @classmethod
    def resume_or_create(
        cls,
        uri: str | Path,
        n_frames: int,
        annotators: Sequence[str],
        classes: Sequence[str],
        d_embedding: int,
        d_annotator_embedding: int,
        config: PredictConfig,
        attrs: Mapping[str, Any],
    ) -> PredictionStore:
        """The store to write into: the existing one when the same model made it, else a new one.

        Same model (`model_run_id`), annotators, classes and layout: resume it; if the dataset
        has grown since (a new batch, the model unchanged), first `extend` it by the new frames,
        so only those are predicted and their distance sums added. Chunks that fail their check
        are marked unwritten (predicted again), never resumed as complete. A store whose
        attributes or metadata fail their digest, or anything else: create it afresh
        (overwriting; the predictions are derived data). Both are logged with the file.
        """
        if cls.exists(uri):
            store: PredictionStore | None = None
            try:
                opened = cls.open(uri, mode="r+")
                for name in ARRAYS:
                    opened._array(name)  # each array's metadata against its digest
                store = opened
            except DamagedStore as err:
                log.warning("prediction store %s is damaged (%s): predicting it again", uri, err)
            if store is not None:
                chunk = config.chunk_frames or auto_chunk_frames(len(annotators), len(classes), config.dtype)
                same = (
                    store.attrs["model_run_id"] == str(attrs["model_run_id"])
                    and store.dataset_store == str(attrs["dataset_store"])
                    and store.annotators == list(annotators)
                    and store.classes == list(classes)
                    and store.n_frames <= n_frames
                    and store.chunk_frames == chunk
                    and store.logits.dtype == np.dtype(config.dtype)
                    and store.embeddings.shape[1] == d_embedding
                    and store.annotator_embeddings_array.shape[1] == d_annotator_embedding
                )
                if same:
                    store.unmark_damaged_chunks()
                    version = str(attrs["dataset_version"])
                    if n_frames > store.n_frames:
                        store.extend(n_frames - store.n_frames, dataset_version=version)
                    elif store.dataset_version != version:
                        store._set_dataset_version(version)  # new labels on the same frames
                    return store
        return cls.create(uri, n_frames, annotators, classes, d_embedding, d_annotator_embedding,
                          config, attrs, overwrite=True)

    def _commit(self, attrs: dict[str, Any]) -> None:  # JSON boundary: the group attributes
        """Write the group attributes, sealed with their digest (one atomic write of zarr.json)."""
        sealed = integrity.seal(attrs)
        self.group.attrs.put(sealed)
        self.attrs = sealed

    def _set_dataset_version(self, version: str) -> None:
        self._commit(_with_dataset_version(dict(self.attrs), version))

    # ------------------------------------------------------------- nodes
    def _array(self, name: str) -> zarr.Array:
        """One of the store's arrays, its metadata checked when first used."""
        if name not in self._arrays:
            self._arrays[name] = self._open_array(name)
        return self._arrays[name]

    def _partials_group(self) -> zarr.Group:
        node: zarr.Group = integrity.checked_node(self.group, "partials", "group")
        return node

    # ------------------------------------------------------------- properties
    n_frames = property(lambda self: int(self.attrs["n_frames"]))
    chunk_frames = property(lambda self: int(self.attrs["chunk_frames"]))
    annotators = property(lambda self: list(self.attrs["annotators"]))
    classes = property(lambda self: list(self.attrs["classes"]))
    class_names = property(lambda self: list(self.attrs["class_names"]))
    segments = property(lambda self: [(int(a), int(b)) for a, b in self.attrs["segments"]])
    n_annotators = property(lambda self: len(self.attrs["annotators"]))
    n_classes = property(lambda self: len(self.attrs["classes"]))
    model_run_id = property(lambda self: str(self.attrs["model_run_id"]))
    dataset_version = property(lambda self: str(self.attrs["dataset_version"]))
    dataset_store = property(lambda self: str(self.attrs["dataset_store"]))

    @property
    def model_dir(self) -> str | None:
        """The model folder the predictions were made with (as the predict stage recorded it)."""
        value = (self.attrs.get("extra") or {}).get("model_dir")
        return None if value is None else str(value)

    @property
    def logits(self) -> zarr.Array:
        """The logits array (may be longer than `n_frames` after an interrupted `extend`)."""
        return self._array("logits")

    @property
    def embeddings(self) -> zarr.Array:
        return self._array("embeddings")

    @property
    def consensus(self) -> zarr.Array:
        return self._array("consensus")

    @property
    def annotator_embeddings_array(self) -> zarr.Array:
        return self._array("annotator_embeddings")

    def annotator_embeddings(self) -> np.ndarray:
        """The learned annotator embedding table, (n_annotators, e) float32."""
        return np.asarray(self._array("annotator_embeddings")[:])

    @property
    def version(self) -> str:
        """A digest of what the store holds: model run, dataset version, names, frames, layout."""
        key = {k: self.attrs[k] for k in ("dataset_store", "dataset_version", "model_run_id", "annotators",
                                           "classes", "n_frames", "segments")}
        key["dtype"] = str(self.logits.dtype)
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def chunk_bounds(self, index: int) -> tuple[int, int]:
        start = index * self.chunk_frames
        return start, min(start + self.chunk_frames, self.n_frames)

    # ---------------------------------------------------------- resume record
    def written_counts(self) -> np.ndarray:
        """Frames written in each chunk, counted from the chunk's start."""
        n = _n_chunks(self.n_frames, self.chunk_frames)
        return np.asarray(self._array("written")[:n])

    def pending_chunks(self) -> list[tuple[int, int]]:
        """What is left to write, as (start, stop) pieces that each lie within one chunk."""
        out = []
        for index, count in enumerate(self.written_counts().tolist()):
            start, stop = self.chunk_bounds(index)
            if start + count < stop:
                out.append((start + count, stop))
        return out

    def missing_ranges(self) -> list[tuple[int, int]]:
        """Frame ranges not written yet, merged; empty when the store is complete."""
        return merge_ranges(self.pending_chunks())

    @property
    def complete(self) -> bool:
        """Every frame is recorded as written (reads still check each chunk they touch)."""
        return not self.pending_chunks()

    def _chunk_key(self, name: str, index: int) -> str:
        """The store key of chunk `index` along frames of a frame array (or of `written`)."""
        array = self._array(name)
        coords = (index, *([0] * (array.ndim - 1)))
        return f"{array.path}/{array.metadata.encode_chunk_key(coords)}"

    def _raw_get(self, key: str) -> bytes | None:
        """A store file's bytes, unchecked (None when absent)."""
        store = self.group.store
        raw = store._store if isinstance(store, integrity.CheckedStore) else store
        buf = sync(raw.get(key, default_buffer_prototype()))
        return None if buf is None else buf.to_bytes()

    def _check_file(self, name: str, key: str) -> DamagedStore | None:
        try:
            integrity.check_chunk(self._raw_get(key), self._file(key), name)
        except DamagedStore as err:
            return err
        return None

    def _scan_chunks(self) -> Iterator[tuple[int, str, DamagedStore | None]]:
        """(chunk index, array, its damage or None) for each entry of the resume record and each
        frame array's chunk the record counts as written. Reads the files' bytes, decodes nothing
        but the record."""
        written = self._array("written")
        for index in range(_n_chunks(self.n_frames, self.chunk_frames)):
            record = self._check_file("written", self._chunk_key("written", index))
            yield index, "written", record
            if record is None and int(np.asarray(written[index: index + 1])[0]) > 0:
                for name in FRAME_ARRAYS:
                    yield index, name, self._check_file(name, self._chunk_key(name, index))

    def damaged_chunks(self) -> dict[int, list[DamagedStore]]:
        """Chunks along frames whose files fail their check, by chunk index: a chunk the record
        counts as written whose logits, embeddings or consensus file is absent or fails its
        CRC32C, or whose `written` entry itself does."""
        out: dict[int, list[DamagedStore]] = {}
        for index, _, err in self._scan_chunks():
            if err is not None:
                out.setdefault(index, []).append(err)
        return out

    def unmark_damaged_chunks(self) -> list[int]:
        """Mark chunks that fail their check as unwritten, so a resume predicts them again; returns them."""
        damaged = self.damaged_chunks()
        if not damaged:
            return []
        for index, errors in damaged.items():
            for err in errors:
                log.warning("prediction store chunk %s (%s): %s; predicting chunk %d again",
                            err.file, err.field, err.problem, index)
            self._array("written")[index] = 0
            self.drop_partials(*self.chunk_bounds(index))
        return sorted(damaged)

    # ---------------------------------------------------------------- writing
    def write_chunk(self, start: int, logits: np.ndarray, embeddings: np.ndarray,
                    consensus: np.ndarray) -> None:
        """Write frames [start, start + len(logits)) and record them as written.

        Fastest with whole chunks. A write may cover several chunks; within a chunk it must
        start at the chunk's start or where the chunk's written frames end (no gaps). A chunk
        with written frames must still have its files (DamagedStore otherwise).
        """
        n = len(logits)
        stop = start + n
        n_ann, n_cls = self.n_annotators, self.n_classes
        if n == 0:
            return
        if start < 0 or stop > self.n_frames:
            raise ValueError(f"frames [{start}, {stop}) outside the store's {self.n_frames} frames")
        if logits.shape != (n, n_ann, n_cls):
            raise ValueError(f"logits shape {logits.shape} != {(n, n_ann, n_cls)}")
        if embeddings.shape != (n, self.embeddings.shape[1]):
            raise ValueError(f"embeddings shape {embeddings.shape} != {(n, self.embeddings.shape[1])}")
        if consensus.shape != (n, n_cls):
            raise ValueError(f"consensus shape {consensus.shape} != {(n, n_cls)}")
        stored = np.asarray(logits, dtype=self.logits.dtype)
        if not np.isfinite(stored).all():
            raise ValueError(f"non-finite logits in frames [{start}, {stop}) (as {self.logits.dtype})")
        chunk = self.chunk_frames
        first, last = start // chunk, (stop - 1) // chunk
        counts = np.asarray(self._array("written")[first: last + 1])
        for i, index in enumerate(range(first, last + 1)):
            c0 = index * chunk
            if max(start, c0) > c0 + int(counts[i]):
                raise ValueError(
                    f"write at frame {start} leaves a gap in chunk {index}: its written frames end at "
                    f"{c0 + int(counts[i])}")
            if counts[i] > 0:  # frames written there before: their files must be there to be merged
                for name in FRAME_ARRAYS:
                    key = self._chunk_key(name, index)
                    if not sync(self.group.store.exists(key)):
                        raise DamagedStore(self._file(key), name, "missing",
                                           f"a chunk file is missing though {int(counts[i])} frames are recorded "
                                           "as written there")
        self.drop_partials(start, stop)
        with integrity.lenient(self.group):  # a chunk not written yet is absent; checksums still apply
            self.logits[start:stop] = stored
            self.embeddings[start:stop] = np.asarray(embeddings, dtype=self.embeddings.dtype)
            self.consensus[start:stop] = np.asarray(consensus, dtype=np.float32)
        ends = np.array([min(stop, (index + 1) * chunk) - index * chunk for index in range(first, last + 1)])
        self._array("written")[first: last + 1] = np.maximum(counts, ends)

    def set_annotator_embeddings(self, table: np.ndarray) -> None:
        """Store the head's annotator embedding table, one row per annotator."""
        array = self._array("annotator_embeddings")
        if table.shape != array.shape:
            raise ValueError(f"annotator embeddings shape {table.shape} != {array.shape}")
        array[:] = np.asarray(table, dtype=np.float32)

    def extend(self, n_new_frames: int, dataset_version: str | None = None) -> tuple[int, int]:
        """Add `n_new_frames` unwritten frames at the end (a new dataset batch); returns their range.

        The arrays grow first (and the new chunks of the resume record are written as 0) and
        the attributes (the commit) last, so an interrupted extend leaves the store as it
        was; calling it again completes it.
        """
        if n_new_frames <= 0:
            raise ValueError("extend needs n_new_frames > 0")
        start = self.n_frames
        stop = start + int(n_new_frames)
        for name in FRAME_ARRAYS:
            array = self._array(name)
            array.resize((stop, *array.shape[1:]))
        old_chunks, new_chunks = _n_chunks(start, self.chunk_frames), _n_chunks(stop, self.chunk_frames)
        written = self._array("written")
        written.resize((new_chunks,))
        if new_chunks > old_chunks:
            written[old_chunks:new_chunks] = 0
        attrs = dict(self.attrs)  # JSON boundary: the group attributes
        attrs["n_frames"] = stop
        attrs["segments"] = [*attrs["segments"], [start, stop]]
        if dataset_version is not None:
            attrs = _with_dataset_version(attrs, str(dataset_version))
        self._commit(attrs)  # one commit: the new frames and the version they come from
        self._arrays = {}  # opened again (and checked against the new counts) on next use
        return start, stop

    # ---------------------------------------------------------- partial sums
    def write_partial(self, stat: str, start: int, stop: int, sums: np.ndarray) -> None:
        """Keep the (n_annotators, n_annotators) float64 sums of `stat` over frames [start, stop).

        The array is written first and its attributes sealed last: a partial without a seal
        (an interrupted write) is not used and is replaced.
        """
        n = self.n_annotators
        if sums.shape != (n, n):
            raise ValueError(f"partial sums shape {sums.shape} != {(n, n)}")
        partials = self.group.require_group("partials")
        body = {"stat": stat, "start": int(start), "stop": int(stop), "annotators": self.annotators}
        array = partials.create_array(_partial_name(stat, start, stop), shape=(n, n), chunks=(n, n),
                                      dtype="float64", overwrite=True, compressors=integrity.compressors(None),
                                      attributes=body)
        array[:] = np.asarray(sums, np.float64)
        array.attrs.put(integrity.seal({**body, "shape": [n, n], "dtype": "float64"}))

    def _partial_arrays(self) -> list[tuple[str, zarr.Array | DamagedStore]]:
        """(name, array) for each partial with a zarr.json; a damaged zarr.json gives the error instead."""
        if "partials" not in self.group:
            return []
        group = self._partials_group()
        names = sync(_list_dir(self.group.store, "partials/"))
        out: list[tuple[str, zarr.Array | DamagedStore]] = []
        for name in sorted(names):
            if name == "zarr.json" or not sync(self.group.store.exists(f"partials/{name}/zarr.json")):
                continue  # no metadata: not a partial (or one whose deletion was interrupted)
            try:
                out.append((name, integrity.checked_node(group, name, "array")))
            except DamagedStore as err:
                out.append((name, err))
        return out

    def _checked_partial(self, name: str, array: zarr.Array) -> dict[str, Any] | None:
        """A partial's sealed attributes (None for an unsealed one: an interrupted write)."""
        attrs: dict[str, Any] = dict(array.attrs)  # JSON boundary: the partial's attributes
        if integrity.DIGEST not in attrs:
            return None
        file = self._file(f"partials/{name}/zarr.json")
        integrity.check_seal(attrs, file)
        n = self.n_annotators
        codecs = [c.to_dict().get("name") for c in array.metadata.codecs]  # type: ignore[union-attr]
        if (array.shape != (n, n) or array.chunks != (n, n) or array.dtype != np.float64
                or list(attrs["shape"]) != [n, n] or not codecs or codecs[-1] != "crc32c"):
            raise DamagedStore(file, f"partials/{name}", array.shape,
                               "the partial's metadata does not match its sealed shape, dtype and checksum codec")
        return attrs

    def partials(self, stat: str) -> dict[tuple[int, int], np.ndarray]:
        """Stored partial sums of `stat` for the current annotators, by frame range (checked)."""
        out = {}
        for name, array in self._partial_arrays():
            if isinstance(array, DamagedStore):
                raise array
            attrs = self._checked_partial(name, array)
            if attrs is None or attrs.get("stat") != stat or attrs.get("annotators") != self.annotators:
                continue
            if int(attrs["stop"]) > self.n_frames:
                continue
            out[(int(attrs["start"]), int(attrs["stop"]))] = np.asarray(array[:])
        return out

    def drop_partials(self, start: int = 0, stop: int | None = None) -> int:
        """Delete the partial sums that cover any frame in [start, stop), and any whose metadata
        fails its check (they are derived; sums that cannot be trusted go); returns how many."""
        stop = self.n_frames if stop is None else stop
        doomed = []
        for name, array in self._partial_arrays():
            try:
                attrs = None if isinstance(array, DamagedStore) else self._checked_partial(name, array)
            except (DamagedStore, KeyError, TypeError, ValueError):
                attrs = None
            if attrs is None or (int(attrs["start"]) < stop and int(attrs["stop"]) > start):
                doomed.append(name)
        if doomed:
            group = self._partials_group()
            for name in doomed:
                del group[name]
        return len(doomed)

    # ---------------------------------------------------------------- verify
    @classmethod
    def verify(cls, uri: str | Path) -> StoreReport:
        """Check the whole store without decoding: the attributes' digest, each array's
        metadata, every chunk file the resume record counts as written (exists, CRC32C), the
        resume record, the annotator embeddings and each partial sum. Reports, never raises
        for damage (`annostyle verify`)."""
        uri = str(uri)
        if not cls.exists(uri):
            lost = _lost_manifest(uri)
            return StoreReport(kind="predictions", uri=uri, exists=lost is not None,
                               damaged=[integrity.damaged_from(lost)] if lost else [])
        try:
            store = cls.open(uri)
            for name in ARRAYS:
                store._array(name)  # each array's metadata against its digest
        except DamagedStore as opening:
            return StoreReport(kind="predictions", uri=uri, exists=True, damaged=[integrity.damaged_from(opening)],
                               arrays=_fallback_arrays(uri))
        reports = {name: ArrayReport(name=name, chunks=0) for name in ARRAYS}
        for _, name, found in store._scan_chunks():
            reports[name].chunks += 1
            if found is not None:
                reports[name].damaged.append(integrity.damaged_from(found))
        reports["annotator_embeddings"] = integrity.verify_array(store._array("annotator_embeddings"))
        out = [reports[name] for name in ARRAYS]
        damaged: list[DamagedFile] = []
        for name, array in store._partial_arrays():
            if isinstance(array, DamagedStore):
                damaged.append(integrity.damaged_from(array))
                continue
            try:
                store._checked_partial(name, array)
            except DamagedStore as err:
                damaged.append(integrity.damaged_from(err))
            out.append(integrity.verify_array(array))
        return StoreReport(kind="predictions", uri=uri, exists=True, arrays=out, damaged=damaged)

    # ------------------------------------------------------------------ export
    def export_npz(
        self,
        dest: str | Path | MutableMapping[str, Any],
        offsets: np.ndarray,
        sequence_names: Sequence[str],
        dtype: str = "float32",
    ) -> NpzExport:
        """Write the MABe notebook's layout: per sequence, per annotator, `np.savez_compressed` bytes.

        `dest` is a folder or a mapping. A folder gets `<sequence>/<annotator>.npz` (names
        percent-encoded to be file names), each file holding exactly those bytes, and an
        `index.json` naming the files; a mapping gets `dest[sequence][annotator] = bytes`. The
        logits are cast to `dtype` (the notebook's float32 by default).
        """
        offsets = np.asarray(offsets, dtype=np.int64)
        if len(offsets) != len(sequence_names) + 1 or offsets[-1] > self.n_frames:
            raise ValueError("offsets must have one more entry than sequence_names and end within the store")
        missing = [r for r in self.missing_ranges() if r[0] < offsets[-1]]
        if missing:
            raise InputError(self.uri, "written", missing[:3], "prediction store is incomplete; finish predict first")
        folder = None if isinstance(dest, MutableMapping) else Path(dest)
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        annotators = self.annotators
        # JSON boundary: index.json
        index: dict[str, Any] = {"format": "mabe-npz", "annotators": annotators, "classes": self.classes,
                                 "dtype": dtype, "sequences": []}
        total = 0
        files = 0
        s = 0
        n_seq = len(sequence_names)
        while s < n_seq:
            # read whole groups of sequences spanning about one chunk at a time
            e = s + 1
            while e < n_seq and offsets[e + 1] - offsets[s] <= self.chunk_frames:
                e += 1
            block = np.asarray(self.logits[offsets[s]: offsets[e]])
            for i in range(s, e):
                name = str(sequence_names[i])
                rows = block[offsets[i] - offsets[s]: offsets[i + 1] - offsets[s]]
                entry: dict[str, bytes] = {}
                for a, annotator in enumerate(annotators):
                    buf = io.BytesIO()
                    np.savez_compressed(buf, rows[:, a, :].astype(dtype))
                    entry[annotator] = buf.getvalue()
                    total += len(entry[annotator])
                files += len(entry)
                if folder is None:
                    dest[name] = entry  # type: ignore[index]
                else:
                    seq_dir = folder / quote(name, safe="")
                    seq_dir.mkdir(exist_ok=True)
                    for annotator, payload in entry.items():
                        atomic_write_bytes(seq_dir / f"{quote(annotator, safe='')}.npz", payload)
                    index["sequences"].append({"name": name, "folder": quote(name, safe=""),
                                               "frames": [int(offsets[i]), int(offsets[i + 1])]})
            s = e
        if folder is not None:
            index["files"] = {a: f"{quote(a, safe='')}.npz" for a in annotators}
            atomic_write_bytes(folder / "index.json", json.dumps(index, indent=1).encode())
        return NpzExport(sequences=n_seq, files=files, bytes=total,
                         dest=str(folder) if folder is not None else "<mapping>")

    # ---------------------------------------------------------------- summary
    def summary(self) -> dict[str, Any]:  # JSON boundary: the store's summary (PredictResult's first fields)
        """Shape, dtype and sizes, as JSON-able values (what `annostyle predict` reports)."""
        logits = self.logits
        decoded = self.n_frames * self.n_annotators * self.n_classes * logits.dtype.itemsize
        stored_logits = logits.nbytes_stored()
        stored = sum(self._array(name).nbytes_stored() for name in (*FRAME_ARRAYS, "annotator_embeddings"))
        return {
            "store": self.uri,
            "version": self.version,
            "shape": [self.n_frames, self.n_annotators, self.n_classes],
            "dtype": str(logits.dtype),
            "chunk_frames": self.chunk_frames,
            "bytes": int(stored),
            "logits_bytes": int(stored_logits),
            "compression_ratio": decoded / stored_logits if stored_logits else None,
            "complete": self.complete,
            "model_run_id": self.model_run_id,
            "dataset_version": self.dataset_version,
        }


class ChunkReader:
    """Whole chunks of one frame array of a prediction store, for one pass over the store.

    Each chunk file is fetched through the store's `CheckedStore`, which checks it once (absent,
    truncated or failing its CRC32C: `errors.DamagedStore`). For the codec chain every store
    writes (bytes, Blosc, crc32c) the chunk is then decompressed straight into a buffer that the
    calling thread reuses, instead of into a fresh array that Zarr then copies into the
    selection's output: on a pass over the logits that allocation (page faults on a new 6 MiB
    buffer per chunk) and copy cost about as much as the Gram sums themselves. Any other chain
    reads through Zarr (checked the same way).

    `read(i)` returns a view that stays valid until the same thread reads again. Picklable (by
    URI, array name and the store's version): a Dask worker process opens the store itself, once
    per process (the opened array is kept per process, buffers per thread).
    """

    def __init__(self, store: PredictionStore, name: str = "logits") -> None:
        if name not in FRAME_ARRAYS:
            raise ValueError(f"not a frame array: {name!r}")
        self.uri, self.name = store.uri, name
        self.key = (store.uri, name, store.version, store.chunk_frames)
        self.chunk_frames, self.n_frames = store.chunk_frames, store.n_frames

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return ("annostyle.ChunkReader", *self.key)

    def _opened(self) -> tuple[Any, zarr.Array, bool]:
        with _READER_LOCK:
            state = _OPENED.get(self.key)
            if state is None:
                store = PredictionStore.open(self.uri)  # the seal and the array's metadata digest, once
                if (store.uri, self.name, store.version, store.chunk_frames) != self.key:
                    raise DamagedStore(store._file("zarr.json"), "manifest", store.version,
                                       "the prediction store changed during the pass over it")
                array = store._array(self.name)
                if len(_OPENED) >= 16:  # a long-lived process (serve, a worker) meets many stores
                    _OPENED.clear()
                state = _OPENED[self.key] = (array.store, array, _plain_blosc_chain(array))
            return state

    def read(self, index: int) -> np.ndarray:
        """Chunk `index` along frames, cut to the store's frames."""
        checked, array, direct = self._opened()
        start, stop = index * self.chunk_frames, min((index + 1) * self.chunk_frames, self.n_frames)
        if not 0 <= start < stop:
            raise IndexError(f"chunk {index} is outside the {self.n_frames} frames of {self.uri}")
        if not direct:
            return np.asarray(array[start:stop])
        key = f"{array.path}/{array.metadata.encode_chunk_key((index, *([0] * (array.ndim - 1))))}"
        value = sync(checked.get(key, default_buffer_prototype()))  # CheckedStore: exists, CRC32C
        payload = value.as_numpy_array()[:-4]
        buffers = _BUFFERS.__dict__.setdefault("by_shape", {})
        buffer = buffers.get((array.chunks, array.dtype.str))
        if buffer is None:
            buffer = buffers[(array.chunks, array.dtype.str)] = np.empty(array.chunks, array.dtype)
        nbytes = int.from_bytes(bytes(payload[4:8]), "little")  # the Blosc header's uncompressed size
        if len(payload) < 16 or nbytes != buffer.nbytes:
            raise DamagedStore(f"{self.uri.rstrip('/')}/{key}", self.name, nbytes,
                               f"the chunk decompresses to {nbytes} bytes, not the {buffer.nbytes} its shape needs")
        numcodecs.blosc.decompress(payload, buffer)
        return buffer[: stop - start]


_READER_LOCK = threading.Lock()
_OPENED: dict[tuple[Any, ...], tuple[Any, zarr.Array, bool]] = {}  # ChunkReader.key -> the opened array
_BUFFERS = threading.local()  # per thread: (chunk shape, dtype) -> the buffer chunks decompress into


def _plain_blosc_chain(array: zarr.Array) -> bool:
    """The array's codecs are (little-endian bytes, Blosc, crc32c) on a little-endian machine
    with a native dtype: what `ChunkReader` decodes itself."""
    codecs = list(array.metadata.codecs)  # type: ignore[union-attr]
    if len(codecs) != 3 or sys.byteorder != "little" or not array.dtype.isnative:
        return False
    first, middle, last = codecs
    little = isinstance(first, BytesCodec) and (first.endian is None or first.endian.value == "little")
    return little and isinstance(middle, BloscCodec) and isinstance(last, Crc32cCodec)


def _n_chunks(n_frames: int, chunk: int) -> int:
    return max(1, -(-n_frames // chunk))


def _with_dataset_version(attrs: dict[str, Any], version: str) -> dict[str, Any]:  # JSON boundary: attributes
    """Attributes that say the store follows the dataset store at `version`."""
    return {**attrs, "dataset_version": version, "offsets_source": f"{attrs['dataset_store']}#offsets@{version}"}


def _partial_range(array: zarr.Array) -> tuple[int, int]:
    """The frame range [start, stop) a partial-sums array covers."""
    attrs: dict[str, Any] = dict(array.attrs)  # JSON boundary: the partial's attributes
    return int(attrs["start"]), int(attrs["stop"])


def _partial_name(stat: str, start: int, stop: int) -> str:
    return f"{stat}_{int(start)}_{int(stop)}"


def _fixed_axes(name: str) -> slice:
    """The axes of an array's shape that never change (frame arrays and the record grow along axis 0)."""
    return slice(0, None) if name == "annotator_embeddings" else slice(1, None)


async def _list_dir(store: Any, prefix: str) -> list[str]:
    return [name async for name in store.list_dir(prefix)]


def _lost_manifest(uri: str) -> DamagedStore | None:
    """The error for a local store folder that holds files but no group zarr.json, else None."""
    path = local_path(uri) if is_local(uri) else None
    if path is None or not path.is_dir() or not any(path.iterdir()):
        return None
    return DamagedStore(f"{uri.rstrip('/')}/zarr.json", "manifest", "missing",
                        "the store's zarr.json is missing (its arrays are there)")


def _fallback_arrays(uri: str) -> list[ArrayReport]:
    """Every chunk its shape implies, of each array that still opens (for a store whose
    attributes fail their check, so the resume record cannot say which chunks are due)."""
    try:
        group = integrity.open_checked_group(uri, mode="r")
    except DamagedStore:
        return []  # the group's zarr.json itself does not parse: reported as the manifest
    out = []
    for name in ARRAYS:
        try:
            out.append(integrity.verify_array(integrity.checked_node(group, name, "array")))
        except DamagedStore as err:
            out.append(ArrayReport(name=name, chunks=0, damaged=[integrity.damaged_from(err)]))
    return out
