"""The watcher's ledger: which batches of a watched folder ran, are running, failed or were refused.

Pure logic on a typed ledger (no Prefect): each function returns a new ledger. The file is
`RootLayout.watch_ledger(dataset)`, written atomically and held under a lock (one watcher per
dataset and root). Batches are keyed by a hash of their bytes, not their names: a batch is done
only after its reprocess flow run reached Completed; a failed or crashed run is retried with
backoff; a run the data refuses (InputError) is rejected and tried again only if its bytes change.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from errors import InputError
from storage.files import atomic_write_bytes

LEDGER_FORMAT: Final = "annostyle.watch-ledger"
LEDGER_VERSION = 1
MAX_RETRY_SECONDS = 3600.0
FINAL_OK = "COMPLETED"

Signature = list[list[str | int]]
"""[[path, size, mtime_ns], ...] for every file of a batch, sorted by path."""

Status = Literal["running", "done", "failed", "rejected"]


@dataclass(frozen=True)
class Found:
    """A stable batch in the watched folder: its entry name, what reprocess gets, its hash."""

    name: str
    target: Path
    digest: str
    mtime_ns: int


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Seen(_Record):
    """A present entry's signature and hash (so a restart need not hash it again)."""

    signature: Signature
    digest: str


class Attempt(_Record):
    """One flow run of a batch and the final state it reached."""

    flow_run_id: str | None
    state: str
    message: str | None
    at: str


class BatchRecord(_Record):
    """One batch (by content hash): its last entry name, status, attempts and runs; times in ISO form."""

    name: str
    target: str
    status: Status
    first_seen: str
    updated: str
    attempts: int = 0
    flow_run_id: str | None = None
    message: str | None = None
    next_try: str | None = None
    runs: list[Attempt] = []


class Ledger(_Record):
    """The ledger file's content: batches by hash, and the entries present at the last scan."""

    format: Literal["annostyle.watch-ledger"] = LEDGER_FORMAT
    format_version: int = LEDGER_VERSION
    dataset: str
    folder: str
    batches: dict[str, BatchRecord] = {}
    seen: dict[str, Seen] = {}


def new_ledger(dataset: str, folder: str) -> Ledger:
    return Ledger(dataset=dataset, folder=folder)


def record_seen(ledger: Ledger, hashed: Mapping[str, tuple[Signature, str]]) -> Ledger:
    """Remember each present entry's signature and hash; entries no longer present are forgotten
    (their batch records stay)."""
    seen = {name: Seen(signature=sig, digest=digest) for name, (sig, digest) in hashed.items()}
    return ledger.model_copy(update={"seen": seen})


def retry_delay(attempts: int, interval: float) -> float:
    """Seconds before a failed batch is tried again: doubling from the scan interval, at most an hour."""
    return min(max(interval, 1.0) * 2 ** max(attempts - 1, 0), MAX_RETRY_SECONDS)


def due(ledger: Ledger, found: list[Found], now: datetime) -> list[Found]:
    """The found batches to run now, oldest first: new ones, and failed ones whose retry time came.

    A hash seen under two names runs once; done, rejected and running batches never run here.
    """
    out: list[Found] = []
    taken: set[str] = set()
    for item in sorted(found, key=lambda f: (f.mtime_ns, f.name)):
        record = ledger.batches.get(item.digest)
        if item.digest in taken:
            continue
        if record is None or (record.status == "failed" and record.next_try is not None and
                              datetime.fromisoformat(record.next_try) <= now):
            out.append(item)
            taken.add(item.digest)
    return out


def _touch(ledger: Ledger, digest: str, now: datetime, **changes: object) -> Ledger:
    old = ledger.batches.get(digest)
    base = old.model_dump() if old else {"first_seen": now.isoformat()}
    record = BatchRecord.model_validate({**base, **changes, "updated": now.isoformat()})
    return ledger.model_copy(update={"batches": {**ledger.batches, digest: record}})


def mark_running(ledger: Ledger, item: Found, flow_run_id: str, now: datetime) -> Ledger:
    """A reprocess run was created for the batch: remember which, before waiting on it."""
    return _touch(ledger, item.digest, now, name=item.name, target=str(item.target), status="running",
                  flow_run_id=flow_run_id, next_try=None)


def mark_rejected(ledger: Ledger, item: Found, message: str, now: datetime) -> Ledger:
    """Bad input: not retried unless the bytes change (then it is another batch)."""
    return _touch(ledger, item.digest, now, name=item.name, target=str(item.target), status="rejected",
                  message=message, next_try=None)


def mark_finished(ledger: Ledger, digest: str, state_type: str, message: str | None, now: datetime,
                  interval: float) -> Ledger:
    """The batch's run reached a final state: Completed = done; bad input = rejected; else retry later."""
    record = ledger.batches[digest]
    attempts = record.attempts + 1
    runs = [*record.runs, Attempt(flow_run_id=record.flow_run_id, state=state_type, message=message,
                                  at=now.isoformat())]
    if state_type == FINAL_OK:
        return _touch(ledger, digest, now, status="done", attempts=attempts, runs=runs, message=message,
                      next_try=None)
    if message and "InputError" in message:
        return _touch(ledger, digest, now, status="rejected", attempts=attempts, runs=runs, message=message,
                      next_try=None)
    retry_at = now + timedelta(seconds=retry_delay(attempts, interval))
    return _touch(ledger, digest, now, status="failed", attempts=attempts, runs=runs,
                  message=f"{state_type}: {message}", next_try=retry_at.isoformat())


def running(ledger: Ledger) -> list[tuple[str, str]]:
    """(hash, flow run id) of every batch whose run has not been seen to finish."""
    return [(digest, record.flow_run_id) for digest, record in ledger.batches.items()
            if record.status == "running" and record.flow_run_id is not None]


def is_lost(now: datetime, alive_at: list[datetime | None], heartbeat_seconds: float | None) -> bool:
    """A run not yet final counts as lost (its process is gone) when nothing showed it alive, no state
    change and no heartbeat event, for 2.5 heartbeat periods; with heartbeats off it never is."""
    if not heartbeat_seconds:
        return False
    latest = max((t for t in alive_at if t is not None), default=None)
    return latest is None or (now - latest).total_seconds() > 2.5 * heartbeat_seconds


def idempotency_key(root: Path, dataset: str, digest: str, attempt: int) -> str:
    """The same batch, attempt and root always asks Prefect for the same flow run."""
    payload = f"{Path(root).resolve()}\0{dataset}\0{digest}\0{attempt}"
    return "annostyle-watch-" + hashlib.sha256(payload.encode()).hexdigest()[:40]


# ----------------------------------------------------------------------------- the ledger file
def load_ledger(path: Path, dataset: str, folder: Path) -> Ledger:
    """The ledger at `path`, or a new one; an unreadable ledger is an error, never silently reset."""
    if not path.exists():
        return new_ledger(dataset, str(folder))
    try:
        text = path.read_text()
    except OSError as err:
        raise InputError(path, None, None, f"watch ledger unreadable ({err}); {_START_OVER}") from err
    try:
        return Ledger.model_validate_json(text)
    except ValidationError as err:
        if any(e["type"] == "json_invalid" for e in err.errors()):
            raise InputError(path, None, None, f"watch ledger unreadable ({err}); {_START_OVER}") from err
        raise InputError(path, "format", None, f"not a watch ledger ({err})") from err


_START_OVER = ("move it away to start over (batches would be run again; the dataset store skips those "
               "it holds)")


def save_ledger(path: Path, ledger: Ledger) -> None:
    """Write the ledger atomically (storage.files): a crash leaves the old ledger or the new one, and
    its temporary file is new, exclusively made and never reached through a planted symlink."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, ledger.model_dump_json(indent=1).encode())


@contextlib.contextmanager
def ledger_lock(path: Path) -> Iterator[None]:
    """Hold `<ledger>.lock` for as long as the watcher runs: one watcher per dataset and root."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path.with_suffix(".lock"), "w")  # noqa: SIM115 - held for the context
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise InputError(path, None, None, "another watcher is running for this dataset and root") from err
        yield
    finally:
        handle.close()
