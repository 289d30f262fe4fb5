"""The dataset store: a versioned Zarr v3 group of frames, labels, gold and features.

Layout (every array chunked along frames, Blosc-compressed):

    features        (n_frames, ...) float32      only for datasets with features
    labels          (n_frames, n_annotators) int16, -1 = not labelled
    gold            (n_frames,) int16, -1 = unknown
    split           (n_frames,) int8, the data's own split (configs.splits: train 0, valid 1,
                    test 2, -1 = none); only once a batch gave one (a store without it reads -1)
    offsets         (n_sequences + 1,) int64     frames of sequence i: offsets[i]:offsets[i+1]
    sequence_names  (n_sequences,) str
    item_names      (n_frames,) str              only for item data
    history/<k>/    prior values of the rows batch k changed (frames, labels, gold, split)
    zarr.json       group attributes: the manifest (the commit), a pending marker, the digests
                    of each array's metadata, and a digest of all of these

The manifest lists every committed batch with its content hash, time, counts and frame
range; writing it (one atomic write of the group's zarr.json) is the commit. A version id is
a hash chained over the committed batches' content hashes, so the same batches in the same
order give the same version. Arrays may be longer than the committed counts while a batch
is being written; every read is cut to the committed counts.

Rows that a batch changes in place (new labels on existing frames) are saved to
`history/<k>` before they are touched. That copy serves two purposes: a crashed append is
rolled back from it, and an older version is read by laying it over the current rows.

How damage is detected (`storage/integrity.py`): every chunk of every array ends with a CRC32C
and every chunk is written, and the store is read through a store wrapper that checks each
chunk it reads, so a flipped, truncated or deleted chunk is `errors.DamagedStore` naming the
chunk file. The group attributes carry a digest of themselves and of every array's zarr.json
(its shape along the growing axes is checked against the manifest's counts instead), so an
edited manifest, count, name, version id or codec chain is an error on open. A store written
before checksums (format version 1) is refused with a message saying to re-ingest it.
Creation is atomic: a local store is built in a temporary sibling folder and renamed into
place; on object storage it is one PUT of the group's zarr.json.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from configs.base import CodecConfig
from configs.schema import StoreConfig
from configs.splits import SPLIT_CODES, SPLIT_NAMES, UNASSIGNED
from errors import DamagedStore, InputError
from storage.batch import MISSING, Batch
from storage.integrity import (
    array_metadata_digest,
    check_seal,
    checked_node,
    compressors,
    damaged_from,
    lenient,
    open_checked_group,
    seal,
    verify_array,
)
from storage.location import is_local, local_path
from storage.results.verify import StoreReport

log = logging.getLogger(__name__)

FORMAT = "annostyle.dataset"
FORMAT_VERSION = 2  # 2: chunk checksums and digests (version 1 stores are refused: re-ingest)
EMPTY_VERSION = "0" * 16
ANNOTATOR_CHUNK = 256
WRITE_SLAB_FRAMES = 1 << 22  # frames per write call: large calls let Zarr encode many chunks at once


def chain_version(previous: str, batch_hash: str) -> str:
    """The version id after committing a batch: a hash over the history of batch hashes."""
    return hashlib.sha256(f"{previous}:{batch_hash}".encode()).hexdigest()[:16]


ARRAYS = ("features", "labels", "gold", "split", "offsets", "sequence_names", "item_names")
HISTORY_ARRAYS = ("frames", "labels", "gold", "split")  # split: only when the store has a split array


def _array(group: zarr.Group, name: str) -> zarr.Array:
    """`group[name]`, which the store's layout makes an array (anything else is a damaged store)."""
    node: zarr.Array = checked_node(group, name, "array")
    return node


def blosc(codec: CodecConfig) -> BloscCodec:
    """The Zarr 3 Blosc codec a config asks for."""
    return BloscCodec(cname=codec.cname, clevel=codec.clevel, shuffle=codec.shuffle)


def _fixed_axes(name: str) -> slice:
    """The axes of an array's shape that never change (labels grow along frames and annotators;
    a history array never changes)."""
    if name.startswith("history/"):
        return slice(0, None)
    return slice(2, None) if name == "labels" else slice(1, None)


def _array_digests(group: zarr.Group, names: list[str]) -> dict[str, str]:
    """The metadata digest of each named array that the group holds."""
    return {name: array_metadata_digest(_array(group, name), _fixed_axes(name))
            for name in names if name in group}


def _creating_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.creating")


@dataclass(frozen=True)
class AppendResult:
    """What an append did: `status` is "appended" or "unchanged"."""

    status: str
    version: str
    batch_index: int
    new_frames: int
    new_sequences: int
    touched_frames: int
    labels_added: int
    labels_replaced: int
    new_annotators: list[str]
    decoded_bytes: int
    stored_bytes: int
    seconds: float


class DatasetStore:
    """A dataset store opened at one committed version (the latest unless named).

    >>> store = DatasetStore.create("/tmp/ds.zarr", StoreConfig())  # doctest: +SKIP
    >>> store.append(batch).status                                    # doctest: +SKIP
    'appended'
    """

    def __init__(self, group: zarr.Group, uri: str, version: str | None = None) -> None:
        self.group = group
        self.uri = uri
        self.manifest: dict[str, Any] = {}  # JSON boundary: the manifest (module docstring)
        self.pending: dict[str, Any] | None = None  # JSON boundary: the pending marker
        self.digests: dict[str, str] = {}  # array path -> metadata digest (committed arrays)
        self._checked: dict[str, zarr.Array] = {}  # arrays whose metadata passed its check, this open
        self._load_attrs()
        self._offsets: tuple[str, np.ndarray] | None = None  # (version, offsets)
        batches = self.manifest["batches"]
        if version is None:
            self.batch_count = len(batches)
        else:
            found = [b["index"] for b in batches if b["version"] == version]
            if not found:
                known = [b["version"] for b in batches]
                raise InputError(uri, "version", version, f"no such version; known versions: {known}")
            self.batch_count = found[0] + 1

    def _load_attrs(self) -> None:
        """Read and check the group attributes (format, digest) into manifest, pending and digests."""
        uri = self.uri
        attrs: dict[str, Any] = dict(self.group.attrs)  # JSON boundary: the group's zarr.json attributes
        if attrs.get("format") != FORMAT:
            raise InputError(uri, "format", attrs.get("format"), "not an annostyle dataset store")
        if attrs.get("format_version") != FORMAT_VERSION:
            raise InputError(uri, "format_version", attrs.get("format_version"),
                             f"a store written before chunk checksums (this version reads format "
                             f"{FORMAT_VERSION}): delete {uri} and run `annostyle ingest` again")
        check_seal(attrs, f"{uri.rstrip('/')}/zarr.json")
        self.manifest, self.pending, self.digests = attrs["manifest"], attrs.get("pending"), attrs["arrays"]
        self._checked = {}

    def _put_attrs(self, manifest: dict[str, Any], digests: dict[str, str],
                   pending: dict[str, Any] | None = None) -> None:  # JSON boundary: group attributes
        """Write the sealed group attributes (one atomic write of the group's zarr.json)."""
        attrs: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, "manifest": manifest,
                                 "arrays": digests}
        if pending is not None:
            attrs["pending"] = pending
        self.group.attrs.put(seal(attrs))
        self.manifest, self.pending, self.digests = manifest, pending, digests
        self._checked = {}

    def _new_digests(self, names: list[str]) -> dict[str, str]:
        """The digests so far, plus those of the named arrays that are new (a committed array's
        metadata never changes apart from its growing axes, so its digest is kept, not recomputed)."""
        return {**self.digests, **_array_digests(self.group, [n for n in names if n not in self.digests])}

    def _array(self, name: str) -> zarr.Array:
        """A committed array, its metadata checked against the digests and its shape against the counts."""
        cached = self._checked.get(name)
        if cached is not None:
            return cached
        array = _array(self.group, name)
        file = f"{self.uri.rstrip('/')}/{name}/zarr.json"
        want = self.digests.get(name)
        if want is None:
            if not self.pending:
                raise DamagedStore(file, name, "not in the manifest",
                                   "an array the store's digests do not list")
        elif array_metadata_digest(array, _fixed_axes(name)) != want:
            raise DamagedStore(file, name, "metadata digest",
                               "the array's zarr.json does not match its digest (edited or damaged)")
        latest = self.manifest["batches"][-1]["totals"] if self.manifest["batches"] else None
        if latest is not None and not name.startswith("history/"):
            committed = {"labels": (latest["n_frames"], latest["n_annotators"]),
                         "offsets": (latest["n_sequences"] + 1,),
                         "sequence_names": (latest["n_sequences"],)}.get(name, (latest["n_frames"],))
            have = tuple(array.shape[: len(committed)])
            short = any(h < c for h, c in zip(have, committed, strict=True))
            if short or (not self.pending and have != committed):
                raise DamagedStore(file, name, list(array.shape),
                                   f"the array's shape does not match the manifest's counts {list(committed)}")
        self._checked[name] = array
        return array

    # ----------------------------------------------------------------- opening
    @classmethod
    def create(
        cls,
        uri: str | Path,
        config: StoreConfig,
        classes: list[str] | None = None,
        class_names: list[str] | None = None,
    ) -> DatasetStore:
        """Create an empty store; `classes` fixes the first classes and their order.

        Atomic: a local store is written in a temporary sibling folder and renamed into place (a
        crash leaves only that hidden folder, which nothing reads); on object storage the group's
        zarr.json, attributes included, is one PUT. When another process created the store first,
        this opens theirs.
        """
        uri = str(uri)
        manifest: dict[str, Any] = {  # JSON boundary: the manifest
            "classes": list(classes or []),
            "class_names": list(class_names or classes or []),
            "annotators": [],
            "store": config.model_dump(),
            "batches": [],
        }
        attrs = seal({"format": FORMAT, "format_version": FORMAT_VERSION, "manifest": manifest, "arrays": {}})
        if not is_local(uri):
            return cls(open_checked_group(uri, mode="w-", attributes=attrs), uri)
        target = local_path(uri)
        tmp = _creating_name(target)
        try:
            open_checked_group(str(tmp), mode="w-", attributes=attrs)
            _publish(tmp, target)
        except OSError:
            if not cls.exists(uri):
                raise
            log.info("store %s was created by another process meanwhile: opening it", uri)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return cls.open(uri, mode="r+")

    @classmethod
    def open(cls, uri: str | Path, version: str | None = None, mode: Literal["r", "r+"] = "r") -> DatasetStore:
        """Open at the latest committed version, or at a named one."""
        uri = str(uri)
        try:
            group = open_checked_group(uri, mode=mode)
        except FileNotFoundError as err:
            if _holds_files(uri):
                raise DamagedStore(f"{uri.rstrip('/')}/zarr.json", "manifest", "missing",
                                   "the store's zarr.json is missing: a damaged dataset store "
                                   "(restore it, or delete the folder and ingest again)") from err
            raise InputError(uri, None, uri, "no dataset store here (run `annostyle ingest` first)") from err
        return cls(group, uri, version)

    @classmethod
    def exists(cls, uri: str | Path) -> bool:
        """True when the group's zarr.json is there (whether it is intact is `open`'s check)."""
        uri = str(uri)
        if is_local(uri):
            return (local_path(uri) / "zarr.json").is_file()
        from fsspec.core import url_to_fs

        fs, path = url_to_fs(uri)
        return bool(fs.exists(f"{path.rstrip('/')}/zarr.json"))

    @classmethod
    def verify(cls, uri: str | Path) -> StoreReport:
        """Check every file of the store (manifest digest, each array's zarr.json, every chunk's
        existence and CRC32C) and report what is damaged; never raises for damage."""
        uri = str(uri)
        report = StoreReport(kind="dataset", uri=uri, exists=cls.exists(uri) or _holds_files(uri))
        if not report.exists:
            return report
        try:
            store = cls.open(uri)
        except DamagedStore as err:  # the manifest cannot be trusted: check the chunks of what is there
            report.damaged.append(damaged_from(err))
            try:
                group = open_checked_group(uri)
            except (DamagedStore, FileNotFoundError):
                return report
            with warnings.catch_warnings():  # the writer's lock file is no Zarr node
                warnings.simplefilter("ignore")
                names = [n for n, node in group.members(max_depth=None) if isinstance(node, zarr.Array)]
            report.arrays = [verify_array(_array(group, n)) for n in sorted(names)]
            return report
        for name in sorted(store.digests):
            try:
                report.arrays.append(verify_array(store._array(name)))
            except DamagedStore as err:
                report.damaged.append(damaged_from(err))
        return report

    # ------------------------------------------------------------- properties
    @property
    def batches(self) -> list[dict[str, Any]]:  # JSON boundary: the manifest's batch entries
        return self.manifest["batches"][: self.batch_count]

    @property
    def totals(self) -> dict[str, int]:
        if not self.batch_count:
            return {"n_frames": 0, "n_sequences": 0, "n_annotators": 0, "n_labels": 0,
                    "n_classes": len(self.manifest["classes"])}
        return self.batches[-1]["totals"]

    @property
    def version(self) -> str:
        return self.batches[-1]["version"] if self.batch_count else EMPTY_VERSION

    @property
    def is_latest(self) -> bool:
        return self.batch_count == len(self.manifest["batches"])

    n_frames = property(lambda self: self.totals["n_frames"])
    n_sequences = property(lambda self: self.totals["n_sequences"])
    n_annotators = property(lambda self: self.totals["n_annotators"])
    n_labels = property(lambda self: self.totals["n_labels"])
    n_classes = property(lambda self: self.totals["n_classes"])

    @property
    def classes(self) -> list[str]:
        return self.manifest["classes"][: self.n_classes]

    @property
    def class_names(self) -> list[str]:
        return self.manifest["class_names"][: self.n_classes]

    @property
    def annotators(self) -> list[str]:
        return self.manifest["annotators"][: self.n_annotators]

    @property
    def has_features(self) -> bool:
        return "features" in self.digests

    @property
    def features(self) -> zarr.Array:
        """The features array (may be longer than `n_frames` while a batch is written); reads are checked."""
        return self._array("features")

    @property
    def offsets(self) -> np.ndarray:
        """Sequence i is frames [offsets[i], offsets[i + 1]); read once per version (read-only)."""
        if not self.batch_count:
            return np.zeros(1, dtype=np.int64)
        cached = self._offsets
        if cached is None or cached[0] != self.version:
            offsets = np.asarray(self._array("offsets")[: self.n_sequences + 1])
            offsets.flags.writeable = False
            cached = self._offsets = (self.version, offsets)
        return cached[1]

    @property
    def sequence_names(self) -> np.ndarray:
        if not self.batch_count:
            return np.array([], dtype=str)
        return np.asarray(self._array("sequence_names")[: self.n_sequences])

    @property
    def item_names(self) -> np.ndarray | None:
        if "item_names" not in self.digests:
            return None
        return np.asarray(self._array("item_names")[: self.n_frames])

    @property
    def meta(self) -> dict[str, Any]:  # JSON boundary: the batches' manifest metadata
        """Batch metadata merged in batch order (for example the demo's ground truth)."""
        out: dict[str, Any] = {}
        for batch in self.batches:
            out.update(batch.get("meta") or {})
        return out

    def read_labels(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Labels of frames [start, stop) at this version, (frames, n_annotators) int16."""
        stop = self.n_frames if stop is None else min(stop, self.n_frames)
        rows = np.asarray(self._array("labels")[start:stop, : self.n_annotators]) if self.batch_count \
            else np.zeros((0, 0), np.int16)
        return self._overlay("labels", rows, start, stop)

    def read_gold(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Gold labels of frames [start, stop) at this version, -1 = unknown."""
        stop = self.n_frames if stop is None else min(stop, self.n_frames)
        rows = np.asarray(self._array("gold")[start:stop]) if self.batch_count else np.zeros(0, np.int16)
        return self._overlay("gold", rows, start, stop)

    @property
    def split_counts(self) -> dict[str, int]:
        """Frames per split at this version (`configs.splits` names, plus `none`); {} when no
        batch up to this version gave a split."""
        if not self.batch_count:
            return {}
        return dict(self.batches[-1].get("split_counts") or {})

    @property
    def has_split(self) -> bool:
        """True when the data gives a split for at least one frame at this version."""
        counts = self.split_counts
        return any(counts.get(name, 0) for name in SPLIT_CODES)

    def read_split(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Split codes of frames [start, stop) at this version, int8 (`configs.splits.SPLIT_CODES`);
        all -1 (UNASSIGNED) when the data gives no split (also for stores written before splits)."""
        stop = self.n_frames if stop is None else min(stop, self.n_frames)
        start = min(start, stop)
        if not self.has_split or "split" not in self.digests:
            return np.full(stop - start, UNASSIGNED, np.int8)
        rows = np.asarray(self._array("split")[start:stop])
        return self._overlay("split", rows, start, stop)

    def _overlays(self) -> list[int]:
        """Batches, newest first, whose saved prior rows must be laid over the current rows."""
        later = [b["index"] for b in self.manifest["batches"][self.batch_count:] if b["history"]]
        if self.pending and self.pending.get("history"):
            later.append(self.pending["batch"])
        return sorted(later, reverse=True)

    def _overlay(self, name: str, rows: np.ndarray, start: int, stop: int) -> np.ndarray:
        overlays = self._overlays()
        if not overlays:
            return rows
        rows = np.array(rows, copy=True)
        for index in overlays:
            if f"history/{index}/{name}" not in self.digests:  # a batch before the store had a split
                continue
            frames = np.asarray(self._array(f"history/{index}/frames")[:])
            inside = (frames >= start) & (frames < stop)
            if not inside.any():
                continue
            prior = np.asarray(self._array(f"history/{index}/{name}")[:])[inside]
            if name == "labels":
                width = min(prior.shape[1], rows.shape[1])
                rows[frames[inside] - start, :] = MISSING
                rows[frames[inside] - start, :width] = prior[:, :width]
            else:
                rows[frames[inside] - start] = prior
        return rows

    def summary(self) -> dict[str, Any]:  # JSON boundary: the store part of IngestResult / `--json`
        """Counts and names at this version, as JSON-able values."""
        return {
            "version": self.version,
            "n_items": self.n_frames,
            "n_sequences": self.n_sequences,
            "n_frames": self.n_frames,
            "n_annotators": self.n_annotators,
            "n_labels": self.n_labels,
            "n_classes": self.n_classes,
            "classes": self.classes,
            "class_names": self.class_names,
            "has_features": self.has_features,
            "split_counts": self.split_counts,
            "store": self.uri,
        }

    # ---------------------------------------------------------------- writing
    def append(self, batch: Batch, progress: bool = True) -> AppendResult:
        """Append a batch and commit it; an identical batch already committed changes nothing.

        New sequences become new frames; a sequence the store holds already (same name, same
        length) gets the batch's labels on its existing frames. A label that contradicts the
        same annotator's existing label is an error unless `batch.replace`.
        """
        if not self.is_latest:
            raise InputError(self.uri, "version", self.version, "cannot append to an older version")
        t0 = time.perf_counter()
        batch.validate()
        batch_hash = batch.content_hash()
        with self._write_lock():
            self._reload()
            self.recover()
            for done in self.manifest["batches"]:
                if done["hash"] == batch_hash:
                    log.info("batch %s already committed as version %s: nothing to do",
                             batch_hash[:12], done["version"])
                    return AppendResult("unchanged", self.version, done["index"], 0, 0, 0, 0, 0, [],
                                        0, 0, time.perf_counter() - t0)
            plan = self._plan(batch)
            stored_before = self._stored_bytes()
            self._write(batch, plan, batch_hash, progress)
            stored = self._stored_bytes() - stored_before
        seconds = time.perf_counter() - t0
        decoded = batch.labels.nbytes + (0 if batch.features is None else batch.features.nbytes) + \
            (0 if batch.gold is None else batch.gold.nbytes)
        log.info("appended batch %d (%d new frames, %d changed) as version %s in %.1f s",
                 plan.index, plan.n_new, len(plan.touched), self.version, seconds)
        return AppendResult("appended", self.version, plan.index, plan.n_new, plan.n_new_sequences,
                            len(plan.touched), plan.labels_added, plan.labels_replaced,
                            plan.new_annotators, decoded, stored, seconds)

    @contextmanager
    def _write_lock(self) -> Iterator[None]:
        """One writer at a time on a local store; the OS drops the lock if the writer dies.

        Object storage has no such lock: there, run one writer per store at a time (one ingest,
        reprocess or pipeline run per dataset); readers are always safe, since a commit is one
        atomic PUT of the group's zarr.json.
        """
        if not is_local(self.uri):
            yield
            return
        path = local_path(self.uri) / ".write.lock"
        with open(path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _reload(self) -> None:
        self.group = open_checked_group(self.uri, mode="r+")
        self._load_attrs()
        self.batch_count = len(self.manifest["batches"])

    def recover(self) -> bool:
        """Roll back a batch whose append was interrupted; True if there was one."""
        if not self.pending:
            return False
        index = self.pending["batch"]
        log.warning("rolling back the interrupted append of batch %d (store %s)", index, self.uri)
        t = self.totals
        has_arrays = "labels" in self.group  # the first batch may have died before creating them
        g = self.group
        with lenient(g):  # the interrupted batch may have grown arrays it never wrote
            if self.pending.get("history"):
                labels, gold = _array(g, "labels"), _array(g, "gold")
                frames = np.asarray(self._array(f"history/{index}/frames")[:])
                prior = np.asarray(self._array(f"history/{index}/labels")[:])
                rows = np.full((len(frames), labels.shape[1]), MISSING, np.int16)
                rows[:, : prior.shape[1]] = prior
                labels.set_orthogonal_selection((frames, slice(None)), rows)
                gold.set_orthogonal_selection((frames,), np.asarray(self._array(f"history/{index}/gold")[:]))
                if f"history/{index}/split" in self.digests and "split" in self.digests:
                    _array(g, "split").set_orthogonal_selection(
                        (frames,), np.asarray(self._array(f"history/{index}/split")[:]))
            if "split" in g and "split" not in self.digests:  # created by the interrupted batch
                del g["split"]
            if has_arrays and _array(g, "labels").shape[0] > t["n_frames"]:
                # partial chunks keep their bytes when an array shrinks: blank them first
                _array(g, "labels")[t["n_frames"]:] = MISSING
                _array(g, "gold")[t["n_frames"]:] = MISSING
                if "split" in g:
                    _array(g, "split")[t["n_frames"]:] = UNASSIGNED
            for name, shape in self._committed_shapes().items():
                if name in g and _array(g, name).shape != shape:
                    _array(g, name).resize(shape)
        if f"history/{index}" in g:
            del g[f"history/{index}"]
        if not self.batches:  # a first batch died: its arrays go, the next batch creates them afresh
            for name in ARRAYS:
                if name in g:
                    del g[name]
        digests = {k: v for k, v in self.digests.items() if not k.startswith(f"history/{index}/")}
        self._put_attrs(self.manifest, digests)
        return True

    def _committed_shapes(self) -> dict[str, tuple[int, ...]]:
        t = self.totals
        shapes: dict[str, tuple[int, ...]] = {
            "labels": (t["n_frames"], t["n_annotators"]),
            "gold": (t["n_frames"],),
            "split": (t["n_frames"],),
            "offsets": (t["n_sequences"] + 1,),
            "sequence_names": (t["n_sequences"],),
            "item_names": (t["n_frames"],),
        }
        if "features" in self.group:
            shapes["features"] = (t["n_frames"], *_array(self.group, "features").shape[1:])
        return shapes

    def _stored_bytes(self) -> int:
        return sum(_array(self.group, name).nbytes_stored() for name in
                   ("features", "labels", "gold", "split", "offsets", "sequence_names", "item_names")
                   if name in self.group)

    def _plan(self, batch: Batch) -> _Plan:
        """Check the batch against the store and work out where everything goes; no writes."""
        src = batch.source
        manifest = self.manifest
        t = self.totals
        n_old_frames = t["n_frames"]

        classes = list(manifest["classes"])
        class_names = list(manifest["class_names"])
        class_map = np.empty(len(batch.classes) + 1, np.int16)
        class_map[-1] = MISSING  # code -1 indexes the last slot
        class_index = {key: i for i, key in enumerate(classes)}  # dicts: linear in classes and annotators
        for code, key in enumerate(batch.classes):
            if key not in class_index:
                class_index[key] = len(classes)
                classes.append(key)
                class_names.append(key)
            class_map[code] = class_index[key]
        annotators = list(manifest["annotators"])
        annotator_index = {a: i for i, a in enumerate(annotators)}
        new_annotators = []
        for a in batch.annotators:
            if a not in annotator_index:
                annotator_index[a] = len(annotators)
                annotators.append(a)
                new_annotators.append(a)
        columns = np.array([annotator_index[a] for a in batch.annotators], dtype=np.int64)

        if self.batch_count and (batch.features is None) == self.has_features:
            want = "features" if self.has_features else "no features"
            raise InputError(batch.sources.get("features", src), "features", batch.features is not None,
                             f"the store holds {want}; every batch must match")
        if self.batch_count and (batch.item_names is None) == ("item_names" in self.digests):
            raise InputError(src, "item", batch.item_names is not None,
                             "item names must be given for every batch of an item dataset, or never")
        if self.has_features and batch.features is not None and \
                batch.features.shape[1:] != self.features.shape[1:]:
            raise InputError(batch.sources.get("features", src), "features", batch.features.shape[1:],
                             f"feature shape differs from the store's {self.features.shape[1:]}")

        if n_old_frames:  # the chunks a write will read and extend must be intact (reads are checked)
            for name in ("labels", "gold", "split", "features", "item_names"):
                if name in self.digests:
                    self._array(name)[n_old_frames - 1]

        # sequences the store holds already receive labels on their existing frames
        batch_starts = np.concatenate([[0], np.cumsum(batch.sequence_lengths)])
        old_names = {name: i for i, name in enumerate(self.sequence_names.tolist())}
        offsets = self.offsets
        touched_batch_rows: list[np.ndarray] = []
        touched_frames: list[np.ndarray] = []
        new_rows: list[np.ndarray] = []
        new_lengths: list[int] = []
        new_names: list[str] = []
        for i, name in enumerate(batch.sequence_names):
            rows = np.arange(batch_starts[i], batch_starts[i + 1])
            if name in old_names:
                j = old_names[name]
                length = int(offsets[j + 1] - offsets[j])
                if length != len(rows):
                    raise InputError(src, "sequence", name,
                                     f"the store holds this sequence with {length} frames, the batch has {len(rows)}")
                touched_batch_rows.append(rows)
                touched_frames.append(np.arange(offsets[j], offsets[j + 1]))
            else:
                new_rows.append(rows)
                new_lengths.append(len(rows))
                new_names.append(name)
        touched_rows = np.concatenate(touched_batch_rows) if touched_batch_rows else np.zeros(0, np.int64)
        touched = np.concatenate(touched_frames) if touched_frames else np.zeros(0, np.int64)
        new = np.concatenate(new_rows) if new_rows else np.zeros(0, np.int64)

        mapped = class_map[batch.labels]  # (n_batch_frames, n_batch_annotators) in store codes
        gold = class_map[batch.gold] if batch.gold is not None else np.full(batch.n_frames, MISSING, np.int16)

        labels_added = int((mapped[new] >= 0).sum())
        labels_replaced = 0
        merged_labels: np.ndarray | None = None
        prior_labels: np.ndarray | None = None
        prior_gold: np.ndarray | None = None
        merged_gold: np.ndarray | None = None
        if len(touched):
            prior_labels = np.asarray(self._array("labels").get_orthogonal_selection(
                (touched, slice(0, t["n_annotators"]))))
            prior_gold = np.asarray(self._array("gold").get_orthogonal_selection((touched,)))
            width = len(annotators)
            merged_labels = np.full((len(touched), width), MISSING, np.int16)
            merged_labels[:, : t["n_annotators"]] = prior_labels
            existing = merged_labels[:, columns]
            incoming = mapped[touched_rows]
            clash = (existing >= 0) & (incoming >= 0) & (existing != incoming)
            if clash.any() and not batch.replace:
                r, c = np.argwhere(clash)[0]
                row = int(touched_rows[r])
                seq = int(np.searchsorted(batch_starts, row, side="right")) - 1
                where = f"sequence {batch.sequence_names[seq]!r} frame {row - int(batch_starts[seq])}"
                raise InputError(src, "label", classes[incoming[r, c]],
                                 f"annotator {batch.annotators[c]!r} already labelled {where} "
                                 f"as {classes[existing[r, c]]!r}; set replace: true to overwrite")
            labels_added += int(((existing < 0) & (incoming >= 0)).sum())
            labels_replaced = int(clash.sum())
            merged_labels[:, columns] = np.where(incoming >= 0, incoming, existing)
            incoming_gold = gold[touched_rows]
            gclash = (prior_gold >= 0) & (incoming_gold >= 0) & (prior_gold != incoming_gold)
            if gclash.any() and not batch.replace:
                r = int(np.argwhere(gclash)[0][0])
                raise InputError(batch.sources.get("gold", src), "gold", classes[incoming_gold[r]],
                                 f"frame {int(touched[r])} already has gold {classes[prior_gold[r]]!r}")
            merged_gold = np.where(incoming_gold >= 0, incoming_gold, prior_gold).astype(np.int16)
            if batch.features is not None:
                stored = self.features.get_orthogonal_selection((touched,))
                if not np.array_equal(stored, batch.features[touched_rows]):
                    raise InputError(batch.sources.get("features", src), "features", "changed",
                                     "features of frames the store holds already differ from the stored ones")
        split_plan = self._plan_split(batch, new, touched, touched_rows, mapped, gold, merged_labels, merged_gold)

        totals = {
            "n_frames": n_old_frames + len(new),
            "n_sequences": t["n_sequences"] + len(new_names),
            "n_annotators": len(annotators),
            "n_classes": len(classes),
            "n_labels": t["n_labels"] + labels_added,
        }
        return _Plan(
            index=len(self.manifest["batches"]), classes=classes, class_names=class_names,
            annotators=annotators, new_annotators=new_annotators, columns=columns,
            new_rows=new, new_lengths=new_lengths, new_names=new_names, touched=touched,
            prior_labels=prior_labels, prior_gold=prior_gold, merged_labels=merged_labels,
            merged_gold=merged_gold, mapped=mapped, gold=gold, labels_added=labels_added,
            labels_replaced=labels_replaced, totals=totals, split=split_plan,
        )

    def _plan_split(self, batch: Batch, new: np.ndarray, touched: np.ndarray, touched_rows: np.ndarray,
                    mapped: np.ndarray, gold: np.ndarray, merged_labels: np.ndarray | None,
                    merged_gold: np.ndarray | None) -> _SplitPlan | None:
        """Where the batch's split codes go, checked against the store; None when neither the store
        nor the batch has a split array.

        Refused (InputError naming the split's file): a split value that changes an existing
        frame's split (unless `replace`), a test item that ends up with a crowd label (a batch
        labelling a stored test item, too), and an item with gold but no crowd label and no split,
        once the data gives splits at all (such an item is a validation or a test item, and the
        data must say which).
        """
        if batch.split is None and "split" not in self.digests:
            return None
        ssrc = batch.sources.get("split", batch.source)
        incoming = batch.split if batch.split is not None else np.full(batch.n_frames, UNASSIGNED, np.int8)
        new_split = incoming[new].astype(np.int8)
        prior = merged = np.zeros(0, np.int8)
        if len(touched):
            prior = (np.asarray(self._array("split").get_orthogonal_selection((touched,))).astype(np.int8)
                     if "split" in self.digests else np.full(len(touched), UNASSIGNED, np.int8))
            came = incoming[touched_rows]
            clash = (prior >= 0) & (came >= 0) & (prior != came)
            if clash.any() and not batch.replace:
                r = int(np.flatnonzero(clash)[0])
                raise InputError(ssrc, "split", SPLIT_NAMES[int(came[r])],
                                 f"{batch.frame_name(int(touched_rows[r]))} is already in split "
                                 f"{SPLIT_NAMES[int(prior[r])]!r}; set replace: true to move it")
            merged = np.where(came >= 0, came, prior).astype(np.int8)
            if merged_labels is not None:
                self._check_split_rows(batch, ssrc, touched_rows, merged, merged_labels, merged_gold)
        self._check_split_rows(batch, ssrc, new, new_split, mapped[new], gold[new])
        counts = self.split_counts or ({"none": self.n_frames} if self.n_frames else {})
        counts = {name: counts.get(name, 0) for name in [*SPLIT_CODES, "none"]}
        for codes, sign in ((new_split, 1), (prior, -1), (merged, 1)):
            for name, code in [*SPLIT_CODES.items(), ("none", UNASSIGNED)]:
                counts[name] += sign * int((codes == code).sum())
        return _SplitPlan(new=new_split, prior=prior if len(touched) else None,
                          merged=merged if len(touched) else None, counts=counts)

    @staticmethod
    def _check_split_rows(batch: Batch, ssrc: str, rows: np.ndarray, split: np.ndarray,
                          labels: np.ndarray, gold: np.ndarray | None) -> None:
        """No test frame with a crowd label; no gold-only frame without a split (see `_plan_split`)."""
        if not len(rows):
            return
        labelled = (labels >= 0).any(axis=1) if labels.size else np.zeros(len(rows), bool)
        bad = (split == SPLIT_CODES["test"]) & labelled
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise InputError(ssrc, "split", "test", f"{batch.frame_name(int(rows[r]))} is a test item but has a "
                             "crowd label (from this batch or the store): test items carry no crowd label")
        if gold is not None:
            unsplit = (gold >= 0) & ~labelled & (split == UNASSIGNED)
            if unsplit.any():
                r = int(np.flatnonzero(unsplit)[0])
                raise InputError(batch.sources.get("gold", ssrc), "split", "",
                                 f"{batch.frame_name(int(rows[r]))} has gold and no crowd label but no split "
                                 f"({int(unsplit.sum())} such items): give each a split, test or valid")

    def _write(self, batch: Batch, plan: _Plan, batch_hash: str, progress: bool) -> None:
        g = self.group
        with lenient(g):  # writes into newly grown regions read chunks that do not exist yet
            self._write_arrays(batch, plan, batch_hash, progress)
        self._checked = {}

    def _write_arrays(self, batch: Batch, plan: _Plan, batch_hash: str, progress: bool) -> None:
        g = self.group
        cfg = StoreConfig.model_validate(self.manifest["store"])
        codec = compressors(blosc(cfg.codec))
        chunk = cfg.chunk_frames
        t = self.totals
        n0, n1 = t["n_frames"], plan.totals["n_frames"]
        s0, s1 = t["n_sequences"], plan.totals["n_sequences"]
        width = plan.totals["n_annotators"]

        # 1. prior values of the rows this batch changes, before anything is changed
        has_history = len(plan.touched) > 0
        if has_history:
            hist = g.require_group("history").create_group(str(plan.index), overwrite=True)
            saved = [("frames", plan.touched), ("labels", plan.prior_labels), ("gold", plan.prior_gold)]
            if plan.split is not None and plan.split.prior is not None:
                saved.append(("split", plan.split.prior))
            for name, data in saved:
                hist.create_array(name, data=np.ascontiguousarray(data), compressors=codec)
        # 2. the pending marker: from here on a crash is rolled back from history
        pending = {"batch": plan.index, "hash": batch_hash, "history": has_history}
        history = [f"history/{plan.index}/{a}" for a in HISTORY_ARRAYS
                   if a != "split" or plan.split is not None] if has_history else []
        self._put_attrs(self.manifest, self._new_digests(history), pending)

        # 3. arrays: create on the first batch, grow, write new frames, then changed rows
        if not t["n_frames"] and "labels" not in g:
            g.create_array("labels", shape=(0, width), dtype="int16", chunks=(chunk, ANNOTATOR_CHUNK),
                           fill_value=MISSING, compressors=codec, dimension_names=["frame", "annotator"])
            g.create_array("gold", shape=(0,), dtype="int16", chunks=(chunk,), fill_value=MISSING,
                           compressors=codec, dimension_names=["frame"])
            g.create_array("offsets", shape=(1,), dtype="int64", chunks=(65536,), fill_value=0, compressors=codec)
            _array(g, "offsets")[0:1] = 0  # every chunk is written
            g.create_array("sequence_names", shape=(0,), dtype=str, chunks=(65536,), compressors=codec)
            if batch.item_names is not None:
                g.create_array("item_names", shape=(0,), dtype=str, chunks=(65536,), compressors=codec)
            if batch.features is not None:
                fshape = batch.features.shape[1:]
                g.create_array("features", shape=(0, *fshape), dtype="float32",
                               chunks=(chunk, *fshape), fill_value=0.0, compressors=codec,
                               dimension_names=["frame", *[f"feature_{i}" for i in range(len(fshape))]])
        if plan.split is not None and "split" not in g:  # the first batch that gives a split
            g.create_array("split", shape=(0,), dtype="int8", chunks=(chunk,), fill_value=UNASSIGNED,
                           compressors=codec, dimension_names=["frame"])
            if n0:  # frames stored before it have no split (every chunk is written)
                _array(g, "split").resize((n0,))
                self._write_slabs(_array(g, "split"), 0, np.full(n0, UNASSIGNED, np.int8), progress)
        split = _array(g, "split") if plan.split is not None else None
        labels, gold = _array(g, "labels"), _array(g, "gold")
        offsets, sequence_names = _array(g, "offsets"), _array(g, "sequence_names")
        item_names = _array(g, "item_names") if "item_names" in g else None
        features = _array(g, "features") if "features" in g else None
        old_width = labels.shape[1]
        labels.resize((n1, width))
        first_new_column = -(-old_width // ANNOTATOR_CHUNK) * ANNOTATOR_CHUNK
        if n0 and width > first_new_column:  # chunks of new annotator columns over old frames
            labels[:n0, first_new_column:width] = MISSING
        gold.resize((n1,))
        if split is not None:
            split.resize((n1,))
        offsets.resize((s1 + 1,))
        sequence_names.resize((s1,))
        if item_names is not None:
            item_names.resize((n1,))
        if features is not None:
            features.resize((n1, *features.shape[1:]))

        if len(plan.new_rows):
            new = plan.new_rows
            contiguous = bool(np.all(np.diff(new) == 1)) if len(new) > 1 else True
            take = (lambda a: a[new[0]: new[-1] + 1]) if contiguous else (lambda a: a[new])
            rows = np.full((len(new), width), MISSING, np.int16)
            rows[:, plan.columns] = take(plan.mapped)
            self._write_slabs(labels, n0, rows, progress)
            self._write_slabs(gold, n0, take(plan.gold), progress)
            if split is not None and plan.split is not None:
                self._write_slabs(split, n0, plan.split.new, progress)
            if features is not None and batch.features is not None:
                self._write_slabs(features, n0, take(batch.features), progress, "features")
            if item_names is not None and batch.item_names is not None:
                item_names[n0:n1] = np.asarray([batch.item_names[i] for i in new])
            offsets[s0 + 1: s1 + 1] = n0 + np.cumsum(plan.new_lengths)
            sequence_names[s0:s1] = np.asarray(plan.new_names)
        if plan.merged_labels is not None and plan.merged_gold is not None:  # set when has_history
            labels.set_orthogonal_selection((plan.touched, slice(None)), plan.merged_labels)
            gold.set_orthogonal_selection((plan.touched,), plan.merged_gold)
            if split is not None and plan.split is not None and plan.split.merged is not None:
                split.set_orthogonal_selection((plan.touched,), plan.split.merged)

        # 4. the commit: one atomic write of the group's attributes, without the marker
        previous = self.version
        entry = {
            "index": plan.index,
            "hash": batch_hash,
            "version": chain_version(previous, batch_hash),
            "parent": previous,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "sources": batch.sources,
            "replace": batch.replace,
            "frames": [n0, n1],
            "sequences": [s0, s1],
            "annotators": batch.annotators,
            "new_annotators": plan.new_annotators,
            "touched_frames": int(len(plan.touched)),
            "labels_added": plan.labels_added,
            "labels_replaced": plan.labels_replaced,
            "history": has_history,
            "meta": batch.meta,
            "totals": plan.totals,
        }
        if plan.split is not None:
            entry["split_counts"] = plan.split.counts
        manifest: dict[str, Any] = {  # JSON boundary: the manifest
            **self.manifest, "classes": plan.classes, "class_names": plan.class_names,
            "annotators": plan.annotators, "batches": [*self.manifest["batches"], entry],
        }
        self._put_attrs(manifest, self._new_digests(list(ARRAYS)))
        self.batch_count = len(manifest["batches"])

    @staticmethod
    def _write_slabs(array: zarr.Array, start: int, data: np.ndarray, progress: bool, what: str = "") -> None:
        """Write `data` at `start` in slabs of whole chunks, logging rate and ETA for big writes."""
        n = len(data)
        chunk = array.chunks[0]
        slab = max(chunk, (WRITE_SLAB_FRAMES // chunk) * chunk)
        t0 = time.perf_counter()
        pos = 0
        while pos < n:
            # align slab ends to chunk boundaries of the array so each chunk is written once
            end = min(n, ((start + pos) // chunk) * chunk + slab - start)
            array[start + pos: start + end] = data[pos:end]
            pos = end
            if progress and what and n > slab:
                rate = pos / max(time.perf_counter() - t0, 1e-9)
                log.info("writing %s: %d/%d frames (%.0f frames/s, ETA %.0f s)",
                         what, pos, n, rate, (n - pos) / rate)


@dataclass
class _Plan:
    index: int
    classes: list[str]
    class_names: list[str]
    annotators: list[str]
    new_annotators: list[str]
    columns: np.ndarray
    new_rows: np.ndarray
    new_lengths: list[int]
    new_names: list[str]
    touched: np.ndarray
    prior_labels: np.ndarray | None
    prior_gold: np.ndarray | None
    merged_labels: np.ndarray | None
    merged_gold: np.ndarray | None
    mapped: np.ndarray
    gold: np.ndarray
    labels_added: int
    labels_replaced: int
    totals: dict[str, int]
    split: _SplitPlan | None = None

    @property
    def n_new(self) -> int:
        return len(self.new_rows)

    @property
    def n_new_sequences(self) -> int:
        return len(self.new_names)


@dataclass
class _SplitPlan:
    """The split codes an append writes: of its new frames, the touched frames' prior and merged
    codes, and the frames per split afterwards (the manifest's `split_counts`)."""

    new: np.ndarray
    prior: np.ndarray | None
    merged: np.ndarray | None
    counts: dict[str, int]


def open_or_create(uri: str, config: StoreConfig, classes: list[str] | None,
                   class_names: list[str] | None) -> DatasetStore:
    """Open the store for appending, creating it (empty, version 000...) when missing."""
    if DatasetStore.exists(uri):
        if _half_created(uri):
            log.warning("store %s was left half-created by an older version (empty group): creating it again", uri)
            _remove_half_created(uri)
        else:
            return DatasetStore.open(uri, mode="r+")
    elif _holds_files(uri):
        DatasetStore.open(uri)  # raises: the files of a store whose zarr.json is gone
    if is_local(uri):
        os.makedirs(local_path(uri).parent, exist_ok=True)
    return DatasetStore.create(uri, config, classes, class_names)


def _publish(tmp: Path, target: Path) -> None:
    """Rename a freshly built store folder into place (an empty folder there is replaced)."""
    os.rename(tmp, target)


def _holds_files(uri: str) -> bool:
    """True when something other than the writer's lock file is stored under `uri`."""
    if is_local(uri):
        path = local_path(uri)
        return path.is_dir() and any(p.name != ".write.lock" for p in path.iterdir())
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(uri)
    return bool(fs.exists(path)) and bool(fs.find(path))


def _half_created(uri: str) -> bool:
    """A group zarr.json without attributes and nothing else: creation by a version before atomic
    creation, killed between its two writes."""
    try:
        group = zarr.open_group(uri, mode="r", zarr_format=3)
    except (FileNotFoundError, ValueError):
        return False
    return not dict(group.attrs) and not list(group.keys())


def _remove_half_created(uri: str) -> None:
    """Delete the lone zarr.json of a half-created store (the folder and its lock stay)."""
    if is_local(uri):
        (local_path(uri) / "zarr.json").unlink(missing_ok=True)
        return
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(uri)
    fs.rm(f"{path.rstrip('/')}/zarr.json")
