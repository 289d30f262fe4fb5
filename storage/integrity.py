"""Damage detection shared by the dataset and prediction stores: a damaged file is an error, never data.

- Every chunk ends with a CRC32C (Zarr 3's `crc32c` codec, last in the codec chain, see
  `compressors`), and every chunk is written (`array.write_empty_chunks`, set here for the
  process), so an absent chunk file is damage, not a fill value.
- Stores are opened through `CheckedStore`, which checks each chunk it hands to Zarr: absent,
  shorter than its checksum, or a checksum mismatch is `errors.DamagedStore` naming the store,
  the array and the chunk file. Reads through the ordinary Zarr API (slices, orthogonal
  selections, Dask) are therefore checked with no listing and no second pass.
- The group's attributes carry a digest of themselves and of each array's metadata
  (`seal`, `check_seal`, `array_metadata_digest`): an edited manifest, count, name or codec
  chain is an error on open.
- `verify_array` checks every chunk of an array without decoding, for `annostyle verify`.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import zarr

# the read-path check: the same CRC32C as Zarr's codec (google_crc32c), 3-4x faster here
from crc32c import crc32c as _crc32c
from zarr.abc.codec import BytesBytesCodec
from zarr.abc.store import ByteRequest
from zarr.codecs import Crc32cCodec
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.storage import FsspecStore, LocalStore, WrapperStore

from errors import DamagedStore
from storage.location import is_local, local_path
from storage.results.verify import ArrayReport, DamagedFile

zarr.config.set({"array.write_empty_chunks": True})  # every chunk on disk: an absent one is damage


class TrustingCrc32c(Crc32cCodec):
    """Zarr's `crc32c` codec, without a second CRC pass over a chunk `CheckedStore` already checked."""

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: Any) -> Buffer:
        if getattr(chunk_bytes, "_annostyle_checked", False):
            return chunk_spec.prototype.buffer.from_array_like(chunk_bytes.as_numpy_array()[:-4])
        return super()._decode_sync(chunk_bytes, chunk_spec)


zarr.registry.register_codec("crc32c", TrustingCrc32c)
zarr.config.set({"codecs.crc32c": f"{__name__}.TrustingCrc32c"})

DIGEST = "digest"


def compressors(codec: BytesBytesCodec | None = None) -> list[BytesBytesCodec]:
    """The bytes-to-bytes codec chain of every array: `codec` (if any), then a CRC32C of the result."""
    return [codec, TrustingCrc32c()] if codec is not None else [TrustingCrc32c()]


def chunk_array(key: str) -> str | None:
    """The array path of a chunk key (`labels/c/3/0` -> `labels`), None for metadata keys."""
    parts = key.split("/")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "c":
            tail = parts[i + 1:]
            if tail and all(p.isdigit() for p in tail):
                return "/".join(parts[:i])
            return None
    return None


def check_chunk(data: np.ndarray | bytes | None, file: str, array: str) -> None:
    """DamagedStore unless `data` is a chunk whose last 4 bytes are the CRC32C of the rest."""
    if data is None:
        raise DamagedStore(file, array, "missing", "a chunk file is missing (every chunk is written)")
    if len(data) < 4:
        raise DamagedStore(file, array, f"{len(data)} bytes", "a chunk file is truncated (shorter than its checksum)")
    view = np.frombuffer(data, np.uint8) if isinstance(data, bytes) else data
    stored = bytes(view[-4:])
    computed = np.uint32(_crc32c(view[:-4].data)).tobytes()
    if stored != computed:
        raise DamagedStore(file, array, "checksum mismatch",
                           "a chunk file fails its CRC32C checksum (flipped bytes or truncated)")


@dataclass
class _Mode:
    lenient: int = 0  # >0: an absent chunk reads as the fill value (while writing only)


class CheckedStore(WrapperStore[Any]):
    """A Zarr store that checks every chunk it reads (see the module docstring)."""

    def __init__(self, store: Any, uri: str = "", mode: _Mode | None = None) -> None:
        super().__init__(store)
        self.uri = uri.rstrip("/")
        self.mode = mode or _Mode()

    def _with_store(self, store: Any) -> CheckedStore:
        return type(self)(store, self.uri, self.mode)

    def file(self, key: str) -> str:
        return f"{self.uri}/{key}"

    async def get(self, key: str, prototype: BufferPrototype,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        value = await self._store.get(key, prototype, byte_range)
        array = chunk_array(key)
        if array is None or byte_range is not None:
            return value
        if value is None and self.mode.lenient:
            return None
        check_chunk(None if value is None else value.as_numpy_array(), self.file(key), array)
        value._annostyle_checked = True  # TrustingCrc32c: no second pass
        return value


def _base_store(uri: str, read_only: bool) -> Any:
    if is_local(uri):
        return LocalStore(local_path(uri), read_only=read_only)
    return FsspecStore.from_url(uri, read_only=read_only)


def open_checked_group(uri: str, mode: Literal["r", "r+", "w-", "w"] = "r", **kwargs: Any) -> zarr.Group:
    """`zarr.open_group` through a `CheckedStore`; a group zarr.json that does not parse is DamagedStore.

    FileNotFoundError when there is no group at `uri` (mode "r"/"r+").
    """
    store = CheckedStore(_base_store(uri, read_only=mode == "r"), uri)
    try:
        return zarr.open_group(store=store, mode=mode, zarr_format=3, **kwargs)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DamagedStore(f"{uri.rstrip('/')}/zarr.json", "manifest", type(err).__name__,
                           "the store's zarr.json does not parse") from err


@contextlib.contextmanager
def lenient(group: zarr.Group) -> Iterator[None]:
    """Absent chunks read as the fill value inside (writes into newly grown regions); checksums still apply."""
    store = group.store
    if not isinstance(store, CheckedStore):
        yield
        return
    store.mode.lenient += 1
    try:
        yield
    finally:
        store.mode.lenient -= 1


def _uri(group: zarr.Group) -> str:
    store = group.store
    base = store.uri if isinstance(store, CheckedStore) else str(group.store_path)
    return f"{base}/{group.path}".rstrip("/") if group.path else base


def checked_node(group: zarr.Group, name: str, kind: Literal["array", "group"]) -> Any:
    """`group[name]`; a missing, unparsable or wrong-kind zarr.json is DamagedStore naming that file."""
    file = f"{_uri(group)}/{name}/zarr.json"
    try:
        node = group[name]
    except KeyError as err:
        raise DamagedStore(file, name, "missing", f"the {kind}'s zarr.json is missing") from err
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, TypeError) as err:
        raise DamagedStore(file, name, type(err).__name__, f"the {kind}'s zarr.json does not parse") from err
    want = zarr.Array if kind == "array" else zarr.Group
    if not isinstance(node, want):
        raise DamagedStore(file, name, type(node).__name__, f"not an {kind}: a damaged store")
    return node


def canonical_digest(value: Any) -> str:
    """sha256 of the canonical JSON of `value` (sorted keys, no spaces, ASCII)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def array_metadata_digest(array: zarr.Array, fixed_axes: slice = slice(1, None)) -> str:
    """Digest of an array's zarr.json with `shape` cut to the axes that never change."""
    meta = array.metadata.to_dict()
    meta["shape"] = list(array.shape[fixed_axes])
    return canonical_digest(json.loads(json.dumps(meta, default=str)))


def seal(attrs: dict[str, Any]) -> dict[str, Any]:  # JSON boundary: group attributes
    """`attrs` with a digest of themselves (write this as the group's attributes)."""
    body = {k: v for k, v in attrs.items() if k != DIGEST}
    return {**body, DIGEST: canonical_digest(body)}


def check_seal(attrs: dict[str, Any], file: str) -> None:  # JSON boundary: group attributes
    """DamagedStore unless the attributes match their digest (`file` is the group's zarr.json)."""
    stored = attrs.get(DIGEST)
    body = {k: v for k, v in attrs.items() if k != DIGEST}
    if stored != canonical_digest(body):
        raise DamagedStore(file, "manifest", stored,
                           "the attributes do not match their digest: the manifest was edited or damaged")


def chunk_keys(array: zarr.Array) -> Iterator[str]:
    """Every chunk key the array's shape and chunk grid imply (separator "/", v3 default encoding)."""
    counts = [math.ceil(s / c) for s, c in zip(array.shape, array.chunks, strict=True)]
    prefix = f"{array.path}/c" if array.path else "c"
    if not counts:
        yield prefix
        return
    for index in itertools.product(*(range(n) for n in counts)):
        yield prefix + "/" + "/".join(map(str, index))


def verify_array(array: zarr.Array) -> ArrayReport:
    """Check every chunk of `array` (exists, CRC32C) without decoding; reports, never raises for damage."""
    store = array.store
    raw = store._store if isinstance(store, CheckedStore) else store
    uri = store.uri if isinstance(store, CheckedStore) else str(array.store_path)
    damaged: list[DamagedFile] = []
    n = 0
    proto = default_buffer_prototype()
    for key in chunk_keys(array):
        n += 1
        buf = zarr.core.sync.sync(raw.get(key, proto))
        try:
            check_chunk(None if buf is None else buf.as_numpy_array(), f"{uri}/{key}", array.path)
        except DamagedStore as err:
            damaged.append(damaged_from(err))
    return ArrayReport(name=array.path, chunks=n, damaged=damaged)


def damaged_from(err: DamagedStore) -> DamagedFile:
    """A DamagedStore as a report entry."""
    return DamagedFile(file=err.file, array=err.field or "", problem=f"{err.problem} ({err.value})")
