"""What counts as a batch in a watched folder, and when it has stopped changing (no Prefect).

One top-level entry of the watched folder is one batch:
- a file in the config's source format (the reader's `suffixes` in `configs.sources.READERS`),
  or a YAML file with a `source:` section (any source kind);
- a folder holding one YAML file with a `source:` section (what `write_table_batch` writes),
  or, for a reader with `folder_batch` (tracks), a folder of that source's files.
Anything else is ignored, and so are names that start with "." or end in "~", ".tmp", ".part",
".partial", ".crdownload" or ".swp". An entry is taken only once its files' sizes and mtimes
(for a YAML batch, also those of the files its source names) are unchanged for one scan, so a
batch written in place is not read half-written; writing elsewhere and moving it in is safest.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import yaml

from configs.schema import PipelineConfig, config_for_batch
from configs.sources import READERS
from errors import InputError
from tasks.ledger import Seen, Signature

YAML_SUFFIXES = frozenset({".yaml", ".yml"})
PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp")


def is_visible(name: str) -> bool:
    """False for hidden and partially written names (".x", "x~", "x.tmp", "x.part", ...)."""
    return not (name.startswith(".") or name.endswith("~") or name.lower().endswith(PARTIAL_SUFFIXES))


def is_candidate_file(name: str, source_kind: str) -> bool:
    """A top-level file that can be a batch for a config of `source_kind`."""
    suffix = Path(name).suffix.lower()
    return is_visible(name) and (suffix in YAML_SUFFIXES or suffix in READERS[source_kind].suffixes)


def stable_names(current: Mapping[str, Signature], previous: Mapping[str, Signature],
                 seen: Mapping[str, Seen]) -> list[str]:
    """Entries whose signature is unchanged since the last scan or since the ledger recorded it."""
    return sorted(name for name, sig in current.items()
                  if previous.get(name) == sig or (name in seen and seen[name].signature == sig))


def batch_target(entry: Path, source_kind: str) -> Path | None:
    """What `reprocess --batch` gets for a top-level entry, or None when it is no batch."""
    reader = READERS[source_kind]
    if entry.is_file():
        if not is_candidate_file(entry.name, source_kind):
            return None
        data_yaml = ".yaml" in reader.suffixes
        if entry.suffix.lower() in YAML_SUFFIXES and not data_yaml and not has_source(entry):
            return None  # a YAML file is a batch here only with a `source:` section
        return entry
    if not entry.is_dir():
        return None
    yamls = [p for p in sorted(entry.iterdir())
             if p.is_file() and is_visible(p.name) and p.suffix.lower() in YAML_SUFFIXES and has_source(p)]
    if len(yamls) == 1:
        return yamls[0]
    if len(yamls) > 1:
        raise InputError(entry, None, [p.name for p in yamls], "a batch folder holds one YAML batch file, not several")
    return entry if reader.folder_batch else None


def has_source(path: Path) -> bool:
    """A YAML file with a `source:` section (a batch in any format)."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and isinstance(data.get("source"), dict)


def referenced(config: PipelineConfig, target: Path) -> list[Path]:
    """Files a YAML batch's source names (they are part of the batch's content)."""
    if target.suffix.lower() not in YAML_SUFFIXES or not has_source(target):
        return []
    return config_for_batch(config, target).source.input_paths()


def batch_files(entry: Path, referenced: list[Path]) -> list[Path]:
    """Every file a batch is made of: the entry's (visible) files plus those its source names."""
    files = [entry] if entry.is_file() else [
        p for p in entry.rglob("*") if p.is_file() and all(is_visible(part) for part in p.relative_to(entry).parts)]
    extra = [p for p in referenced if p.is_file()] + [
        q for p in referenced if p.is_dir() for q in p.rglob("*") if q.is_file() and is_visible(q.name)]
    return sorted({p.resolve() for p in files + extra})


def signature(files: list[Path]) -> Signature:
    """Sizes and mtimes: unchanged across a scan means no one is writing."""
    out: Signature = []
    for path in files:
        st = path.stat()
        out.append([str(path), st.st_size, st.st_mtime_ns])
    return out


def content_hash(files: list[Path], entry: Path) -> str:
    """sha256 over the batch's bytes: the same bytes under another entry name are the same batch.

    Inside a folder entry each file's relative path counts too (the layout is content); files a
    YAML batch names elsewhere count with their path relative to the entry's folder.
    """
    entry = Path(entry).resolve()
    digest = hashlib.sha256()
    for path in files:
        path = path.resolve()
        if path == entry:
            name = ""
        elif entry.is_dir() and path.is_relative_to(entry):
            name = str(path.relative_to(entry))
        else:
            name = os.path.relpath(path, entry.parent)
        digest.update(name.encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()
