"""Where stores live: under the root folder, or under `store.uri_prefix` (a folder or an fsspec URL).

With `store.uri_prefix: s3://bucket/annostyle` the dataset store of `demo` is
`s3://bucket/annostyle/datasets/demo.zarr` and its prediction store
`s3://bucket/annostyle/predictions/demo.zarr`; models, MLflow, the stage cache and analysis
outputs stay local under the root. Zarr opens such URLs through `zarr.storage.FsspecStore`.

Credentials and endpoints come from the environment only (for S3: `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_PROFILE`, `AWS_ENDPOINT_URL`, ...; for any
protocol: fsspec's `FSSPEC_<PROTOCOL>_<OPTION>` variables or its config folder), so a store URI
is all a task, a Dask worker or an MLflow record needs, and it holds no secret: a prefix that
carries a password, query or fragment is refused.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from configs.uri import is_url, set_protocol_check


def is_local(uri: str | Path) -> bool:
    """True for a plain path or a `file://` URL: a store a local lock and `os` calls can reach."""
    return not is_url(uri) or str(uri).startswith("file://")


def local_path(uri: str | Path) -> Path:
    """The filesystem path of a local store URI."""
    return Path(str(uri).removeprefix("file://"))


def check_protocol(scheme: str) -> None:
    """ValueError unless fsspec knows the protocol and its package is installed (for `store.uri_prefix`)."""
    import fsspec

    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError as err:
        raise ValueError(f"protocol {scheme!r} needs a package that is not installed: {err}") from err
    except ValueError as err:
        raise ValueError(f"unknown storage protocol {scheme!r}") from err


def store_uri(root: str | Path, kind: str, name: str, prefix: str | None = None) -> str:
    """`<prefix or root>/<kind>/<name>.zarr`: a path string locally, a URL on object storage."""
    if prefix and is_url(prefix):
        return f"{prefix.rstrip('/')}/{kind}/{name}.zarr"
    return str(Path(prefix or root) / kind / f"{name}.zarr")


def remove_store(uri: str | Path) -> None:
    """Delete a store and everything under it, locally or through fsspec; a missing one is fine."""
    if is_local(uri):
        shutil.rmtree(local_path(uri), ignore_errors=True)
        return
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(str(uri))
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=True)


set_protocol_check(check_protocol)  # configs checks a `store.uri_prefix` protocol through this
