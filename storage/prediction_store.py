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

Export: `export_npz` writes the MABe notebook's layout, per sequence and per annotator the
bytes of `np.savez_compressed(logits)`, read back with `np.load(io.BytesIO(b))["arr_0"]`.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Mapping, MutableMapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import numpy as np
import zarr

from configs.analyze import PredictConfig
from errors import InputError
from storage.dataset_store import blosc
from storage.files import atomic_write_bytes
from storage.location import is_local, local_path
from storage.results.predict import NpzExport

FORMAT = "annostyle.predictions"
FORMAT_VERSION = 1
TARGET_CHUNK_BYTES = 8 << 20
FRAME_ARRAYS = ("logits", "embeddings", "consensus")
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
        if self.attrs.get("format") != FORMAT:
            raise InputError(uri, "format", self.attrs.get("format"), "not an annostyle prediction store")

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
        group = zarr.open_group(uri, mode="w" if overwrite else "w-", zarr_format=3)
        codec = blosc(config.codec)
        group.create_array("logits", shape=(n_frames, n_ann, n_cls), dtype=config.dtype,
                           chunks=(chunk, n_ann, n_cls), fill_value=0.0, compressors=codec,
                           dimension_names=["frame", "annotator", "class"])
        group.create_array("embeddings", shape=(n_frames, d_embedding), dtype=config.embedding_dtype,
                           chunks=(chunk, d_embedding), fill_value=0.0, compressors=codec,
                           dimension_names=["frame", "feature"])
        group.create_array("consensus", shape=(n_frames, n_cls), dtype="float32",
                           chunks=(chunk, n_cls), fill_value=0.0, compressors=codec,
                           dimension_names=["frame", "class"])
        group.create_array("annotator_embeddings", shape=(n_ann, d_annotator_embedding), dtype="float32",
                           chunks=(n_ann, d_annotator_embedding), fill_value=0.0, compressors=codec,
                           dimension_names=["annotator", "feature"])
        group.create_array("written", shape=(_n_chunks(n_frames, chunk),), dtype="int64", chunks=(1,),
                           fill_value=0, compressors=None)
        known = {*REQUIRED_ATTRS, "class_names", "offsets_source"}
        dataset_store, version = str(attrs["dataset_store"]), str(attrs["dataset_version"])
        group.attrs.put({
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
        })
        return cls(group, uri)

    @classmethod
    def open(cls, uri: str | Path, mode: Literal["r", "r+"] = "r") -> PredictionStore:
        uri = str(uri)
        try:
            group = zarr.open_group(uri, mode=mode, zarr_format=3)
        except FileNotFoundError as err:
            raise InputError(uri, None, uri, "no prediction store here (run `annostyle predict` first)") from err
        return cls(group, uri)

    @classmethod
    def exists(cls, uri: str | Path) -> bool:
        try:
            group = zarr.open_group(str(uri), mode="r", zarr_format=3)
        except FileNotFoundError:
            return False
        return dict(group.attrs).get("format") == FORMAT

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
        so only those are predicted and their distance sums added. Anything else: create it
        afresh (overwriting).
        """
        if cls.exists(uri):
            store = cls.open(uri, mode="r+")
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
                version = str(attrs["dataset_version"])
                if n_frames > store.n_frames:
                    store.extend(n_frames - store.n_frames, dataset_version=version)
                elif store.dataset_version != version:
                    store._set_dataset_version(version)  # new labels on the same frames
                return store
        return cls.create(uri, n_frames, annotators, classes, d_embedding, d_annotator_embedding,
                          config, attrs, overwrite=True)

    def _set_dataset_version(self, version: str) -> None:
        attrs = _with_dataset_version(dict(self.group.attrs), version)
        self.group.attrs.put(attrs)
        self.attrs = attrs

    # ------------------------------------------------------------- nodes
    def _array(self, name: str) -> zarr.Array:
        """`group[name]`, which the layout makes an array (anything else is a damaged store)."""
        node = self.group[name]
        if not isinstance(node, zarr.Array):
            raise InputError(self.uri, name, type(node).__name__, "not an array: a damaged prediction store")
        return node

    def _partials_group(self) -> zarr.Group:
        node = self.group["partials"]
        if not isinstance(node, zarr.Group):
            raise InputError(self.uri, "partials", type(node).__name__, "not a group: a damaged prediction store")
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
        return not self.pending_chunks()

    # ---------------------------------------------------------------- writing
    def write_chunk(self, start: int, logits: np.ndarray, embeddings: np.ndarray,
                    consensus: np.ndarray) -> None:
        """Write frames [start, start + len(logits)) and record them as written.

        Fastest with whole chunks. A write may cover several chunks; within a chunk it must
        start at the chunk's start or where the chunk's written frames end (no gaps).
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
        self.drop_partials(start, stop)
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

        The arrays grow first and the attributes (the commit) last, so an interrupted extend
        leaves the store as it was; calling it again completes it.
        """
        if n_new_frames <= 0:
            raise ValueError("extend needs n_new_frames > 0")
        start = self.n_frames
        stop = start + int(n_new_frames)
        for name in FRAME_ARRAYS:
            array = self._array(name)
            array.resize((stop, *array.shape[1:]))
        self._array("written").resize((_n_chunks(stop, self.chunk_frames),))
        attrs: dict[str, Any] = dict(self.group.attrs)  # JSON boundary: the group attributes
        attrs["n_frames"] = stop
        attrs["segments"] = [*attrs["segments"], [start, stop]]
        if dataset_version is not None:
            attrs = _with_dataset_version(attrs, str(dataset_version))
        self.group.attrs.put(attrs)  # one commit: the new frames and the version they come from
        self.attrs = attrs
        return start, stop

    # ---------------------------------------------------------- partial sums
    def write_partial(self, stat: str, start: int, stop: int, sums: np.ndarray) -> None:
        """Keep the (n_annotators, n_annotators) float64 sums of `stat` over frames [start, stop)."""
        n = self.n_annotators
        if sums.shape != (n, n):
            raise ValueError(f"partial sums shape {sums.shape} != {(n, n)}")
        partials = self.group.require_group("partials")
        partials.create_array(_partial_name(stat, start, stop), data=np.asarray(sums, np.float64),
                              overwrite=True, attributes={"stat": stat, "start": int(start), "stop": int(stop),
                                                          "annotators": self.annotators})

    def partials(self, stat: str) -> dict[tuple[int, int], np.ndarray]:
        """Stored partial sums of `stat` for the current annotators, by frame range."""
        if "partials" not in self.group:
            return {}
        out = {}
        for _, array in self._partials_group().arrays():
            attrs: dict[str, Any] = dict(array.attrs)  # JSON boundary: the partial's attributes
            if attrs.get("stat") != stat or attrs.get("annotators") != self.annotators:
                continue
            if int(attrs["stop"]) > self.n_frames:
                continue
            out[(int(attrs["start"]), int(attrs["stop"]))] = np.asarray(array[:])
        return out

    def drop_partials(self, start: int = 0, stop: int | None = None) -> int:
        """Delete the partial sums that cover any frame in [start, stop); returns how many."""
        if "partials" not in self.group:
            return 0
        stop = self.n_frames if stop is None else stop
        group = self._partials_group()
        doomed = [name for name, array in group.arrays()
                  if _partial_range(array)[0] < stop and _partial_range(array)[1] > start]
        for name in doomed:
            del group[name]
        return len(doomed)

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


