"""Store URIs as text: what a valid `store.uri_prefix` looks like, and how an error shows one.

These checks need no storage library. Whether a protocol's fsspec package is installed is asked
of the storage layer, which installs its check here when it is imported (`set_protocol_check`):
this layer must not import fsspec, and a URL prefix validated before that check is installed is
a RuntimeError, never a prefix let through unchecked.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

ProtocolCheck = Callable[[str], None]
"""Raises ValueError when a storage protocol (`s3`, `gcs`, ...) cannot be used here."""

_protocol_check: ProtocolCheck | None = None

NOT_PERSISTENT = frozenset({
    "memory", "data", "http", "https", "github", "git", "reference", "zip", "tar", "libarchive", "jlab",
    "simplecache", "filecache", "blockcache", "cached", "dir",
})
"""fsspec protocols a store cannot live under: in memory only (gone when the command exits),
read-only (web, archives, git) or a cache or wrapper of another protocol (name that one)."""


def set_protocol_check(check: ProtocolCheck) -> None:
    """Install the check of protocols (done by `storage.location` on import)."""
    global _protocol_check
    _protocol_check = check


def is_url(uri: str | Path) -> bool:
    """True for `protocol://...` (including `file://`), False for a plain path."""
    return "://" in str(uri)


def check_prefix(prefix: str) -> str:
    """A valid `store.uri_prefix` without a trailing slash; ValueError says what is wrong."""
    text = prefix.strip()
    if not is_url(text):
        if not Path(text).is_absolute():
            raise ValueError("uri_prefix must be an absolute folder or an fsspec URL such as s3://bucket/prefix")
        return text.rstrip("/") or "/"
    parts = urlsplit(text)
    if parts.scheme.lower() in NOT_PERSISTENT or "::" in text:
        raise ValueError(f"uri_prefix {parts.scheme}:// is not a place a store can persist in (in memory, "
                         "read-only, or a cache of another protocol); use an absolute folder or an object "
                         "store such as s3://bucket/prefix")
    if parts.password:
        raise ValueError("uri_prefix must not carry credentials; they come from the environment "
                         "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ... or fsspec's FSSPEC_* variables)")
    if parts.query or parts.fragment:
        raise ValueError("uri_prefix must not have a query or a fragment (options come from the environment)")
    if not parts.netloc and not parts.path.strip("/"):
        raise ValueError("uri_prefix needs a bucket or folder after the protocol")
    if _protocol_check is None:
        raise RuntimeError("no storage protocol check is installed: import storage.location before "
                           "validating a store.uri_prefix URL")
    _protocol_check(parts.scheme)
    return text.rstrip("/")


def redact(uri: object) -> object:
    """A URI with any password replaced by `***` (for error messages); other values unchanged."""
    if not isinstance(uri, str) or not is_url(uri):
        return uri
    parts = urlsplit(uri)
    if not parts.password:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
