"""Watch a folder for new annotation batches and reprocess each one exactly once.

One top-level entry of the watched folder is one batch:
- a file in the config's source format (table: .csv .tsv .tab .parquet .pq; mapping: .yaml .yml
  .json), or a YAML file with a `source:` section (any source kind);
- a folder holding one YAML file with a `source:` section (what `write_table_batch` writes),
  or, for a tracks config, a folder of `<annotator>/<sequence>.json` tracks.
Anything else is ignored, and so are names that start with "." or end in "~", ".tmp", ".part",
".partial", ".crdownload" or ".swp". An entry is taken only once its files' sizes and mtimes
(for a YAML batch, also those of the files its source names) are unchanged for one scan, so a
batch written in place is not read half-written; writing elsewhere and moving it in is safest.

The ledger `<root>/watch/<dataset>.json` (written atomically, held under a lock so one watcher
per dataset) keys every batch by a hash of its bytes, not its name: a batch is marked done only
after its reprocess flow run reached Completed; a failed or crashed run is retried with backoff;
a run the data refuses (InputError) is marked rejected and tried again only if its bytes change.
The flow run's id is recorded before waiting on it, and runs are created with an idempotency key
(root, dataset, hash, attempt), so a watcher that restarts mid-run waits on the same run instead
of starting a second one; a run left Running by a process that died (no state change and no
heartbeat event for 2.5 heartbeat periods) is marked Crashed and retried. Underneath, the
dataset store skips a batch whose decoded content it already holds ("unchanged"), so even a run
triggered twice appends nothing twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from errors import InputError

log = logging.getLogger(__name__)

LEDGER_FORMAT = "annostyle.watch-ledger"
LEDGER_VERSION = 1
YAML_SUFFIXES = frozenset({".yaml", ".yml"})
DATA_SUFFIXES = {
    "table": frozenset({".csv", ".tsv", ".tab", ".parquet", ".pq"}),
    "mapping": frozenset({".yaml", ".yml", ".json"}),
    "tracks": frozenset(),
    "demo": frozenset(),
}
PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp")
MAX_RETRY_SECONDS = 3600.0
FINAL_OK = "COMPLETED"

Signature = list[list[Any]]
"""[[path, size, mtime_ns], ...] for every file of a batch, sorted by path."""


# ----------------------------------------------------------------------------- pure logic
def is_visible(name: str) -> bool:
    """False for hidden and partially written names (".x", "x~", "x.tmp", "x.part", ...)."""
    return not (name.startswith(".") or name.endswith("~") or name.lower().endswith(PARTIAL_SUFFIXES))


def is_candidate_file(name: str, source_kind: str) -> bool:
    """A top-level file that can be a batch for a config of `source_kind`."""
    suffix = Path(name).suffix.lower()
    return is_visible(name) and (suffix in YAML_SUFFIXES or suffix in DATA_SUFFIXES.get(source_kind, ()))


def stable_names(current: Mapping[str, Signature], previous: Mapping[str, Signature],
                 seen: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Entries whose signature is unchanged since the last scan or since the ledger recorded it."""
    return sorted(name for name, sig in current.items()
                  if previous.get(name) == sig or (seen.get(name) or {}).get("signature") == sig)


def new_ledger(dataset: str, folder: str) -> dict[str, Any]:
    return {"format": LEDGER_FORMAT, "format_version": LEDGER_VERSION, "dataset": dataset, "folder": folder,
            "batches": {}, "seen": {}}


def record_seen(ledger: Mapping[str, Any], hashed: Mapping[str, tuple[Signature, str]]) -> dict[str, Any]:
    """Remember each present entry's signature and hash (so a restart need not hash it again);
    entries no longer present are forgotten (their batch records stay)."""
    seen = {name: {"signature": sig, "digest": digest} for name, (sig, digest) in hashed.items()}
    return {**ledger, "seen": seen}


def retry_delay(attempts: int, interval: float) -> float:
    """Seconds before a failed batch is tried again: doubling from the scan interval, at most an hour."""
    return min(max(interval, 1.0) * 2 ** max(attempts - 1, 0), MAX_RETRY_SECONDS)


def due(ledger: Mapping[str, Any], found: list[Found], now: datetime) -> list[Found]:
    """The found batches to run now, oldest first: new ones, and failed ones whose retry time came.

    A hash seen under two names runs once; done, rejected and running batches never run here.
    """
    batches = ledger["batches"]
    out: list[Found] = []
    taken: set[str] = set()
    for item in sorted(found, key=lambda f: (f.mtime_ns, f.name)):
        record = batches.get(item.digest)
        if item.digest in taken:
            continue
        if record is None or (record["status"] == "failed" and
                              datetime.fromisoformat(record["next_try"]) <= now):
            out.append(item)
            taken.add(item.digest)
    return out


def _touch(ledger: Mapping[str, Any], digest: str, now: datetime, **changes: Any) -> dict[str, Any]:
    batches = dict(ledger["batches"])
    record = dict(batches.get(digest) or {"first_seen": now.isoformat(), "attempts": 0, "flow_run_id": None,
                                           "message": None, "next_try": None})
    record.update(changes, updated=now.isoformat())
    batches[digest] = record
    return {**ledger, "batches": batches}


def mark_running(ledger: Mapping[str, Any], item: Found, flow_run_id: str, now: datetime) -> dict[str, Any]:
    """A reprocess run was created for the batch: remember which, before waiting on it."""
    return _touch(ledger, item.digest, now, name=item.name, target=str(item.target), status="running",
                  flow_run_id=flow_run_id, next_try=None)


def mark_rejected(ledger: Mapping[str, Any], item: Found, message: str, now: datetime) -> dict[str, Any]:
    """Bad input: not retried unless the bytes change (then it is another batch)."""
    return _touch(ledger, item.digest, now, name=item.name, target=str(item.target), status="rejected",
                  message=message, next_try=None)


def mark_finished(ledger: Mapping[str, Any], digest: str, state_type: str, message: str | None, now: datetime,
                  interval: float) -> dict[str, Any]:
    """The batch's run reached a final state: Completed = done; bad input = rejected; else retry later."""
    record = ledger["batches"][digest]
    attempts = int(record.get("attempts", 0)) + 1
    runs = [*record.get("runs", []), {"flow_run_id": record.get("flow_run_id"), "state": state_type,
                                      "message": message, "at": now.isoformat()}]
    if state_type == FINAL_OK:
        return _touch(ledger, digest, now, status="done", attempts=attempts, runs=runs, message=message,
                      next_try=None)
    if message and "InputError" in message:
        return _touch(ledger, digest, now, status="rejected", attempts=attempts, runs=runs, message=message,
                      next_try=None)
    retry_at = now + timedelta(seconds=retry_delay(attempts, interval))
    return _touch(ledger, digest, now, status="failed", attempts=attempts, runs=runs,
                  message=f"{state_type}: {message}", next_try=retry_at.isoformat())


def running(ledger: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(hash, flow run id) of every batch whose run has not been seen to finish."""
    return [(digest, record["flow_run_id"]) for digest, record in ledger["batches"].items()
            if record["status"] == "running"]


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


# ----------------------------------------------------------------------------- files
@dataclass(frozen=True)
class Found:
    """A stable batch in the watched folder: its entry name, what reprocess gets, its hash."""

    name: str
    target: Path
    digest: str
    mtime_ns: int


def batch_target(entry: Path, source_kind: str) -> Path | None:
    """What `reprocess --batch` gets for a top-level entry, or None when it is no batch."""
    if entry.is_file():
        if not is_candidate_file(entry.name, source_kind):
            return None
        data_yaml = ".yaml" in DATA_SUFFIXES.get(source_kind, ())
        if entry.suffix.lower() in YAML_SUFFIXES and not data_yaml and not _has_source(entry):
            return None  # a YAML file is a batch here only with a `source:` section
        return entry
    if not entry.is_dir():
        return None
    yamls = [p for p in sorted(entry.iterdir())
             if p.is_file() and is_visible(p.name) and p.suffix.lower() in YAML_SUFFIXES and _has_source(p)]
    if len(yamls) == 1:
        return yamls[0]
    if len(yamls) > 1:
        raise InputError(entry, None, [p.name for p in yamls], "a batch folder holds one YAML batch file, not several")
    return entry if source_kind == "tracks" else None


def _has_source(path: Path) -> bool:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and isinstance(data.get("source"), dict)


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


# ----------------------------------------------------------------------------- ledger file
def ledger_path(root: Path, dataset: str) -> Path:
    return Path(root) / "watch" / f"{dataset}.json"


def load_ledger(path: Path, dataset: str, folder: Path) -> dict[str, Any]:
    """The ledger at `path`, or a new one; an unreadable ledger is an error, never silently reset."""
    if not path.exists():
        return new_ledger(dataset, str(folder))
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(path, None, None, f"watch ledger unreadable ({err}); move it away to start over "
                                           "(batches would be run again; the dataset store skips those it holds)") from err
    if not isinstance(data, dict) or data.get("format") != LEDGER_FORMAT:
        raise InputError(path, "format", data.get("format") if isinstance(data, dict) else None, "not a watch ledger")
    return data


def save_ledger(path: Path, ledger: Mapping[str, Any]) -> None:
    """Write the ledger atomically: a temporary file, fsync, rename, fsync of the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as handle:
        json.dump(ledger, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


# ----------------------------------------------------------------------------- the watcher
class Watcher:
    """Scans `folder` every `interval` seconds and runs `deployment` once per new batch.

    Runs go through the Prefect API (`run_deployment`), so whoever executes the deployment (the
    serve process's runner or a worker) runs them; batches run one at a time, oldest first.
    """

    def __init__(self, config_path: Path, root: Path, folder: Path, interval: float, deployment: str,
                 heartbeat: float | None = None) -> None:
        from configs.schema import load_config

        self.config_path = Path(config_path).resolve()
        self.config = load_config(self.config_path)
        self.root = Path(root).resolve()
        self.folder = Path(folder).resolve()
        self.interval = float(interval)
        self.deployment = deployment
        self.heartbeat = heartbeat
        self.path = ledger_path(self.root, self.config.name)
        self.ledger = load_ledger(self.path, self.config.name, self.folder)
        self.previous: dict[str, Signature] = {}
        self.reported: set[str] = set()

    # -- one scan
    def scan(self, stop: threading.Event) -> list[Found]:
        """Settle runs in flight, then find the stable batches; returns those run in this scan."""
        for digest, run_id in running(self.ledger):
            self._settle(digest, run_id, stop)
            if stop.is_set():
                return []
        found = self._find()
        for item in found:
            record = self.ledger["batches"].get(item.digest)
            if record and record["status"] in ("done", "rejected") and record.get("name") != item.name:
                self._once(f"same:{item.name}:{item.digest}", "%s has the bytes of batch %s (%s): not run again",
                           item.name, record.get("name"), record["status"])
        ran = []
        for item in due(self.ledger, found, _now()):
            if stop.is_set():
                break
            self._run(item, stop)
            ran.append(item)
        return ran

    def _find(self) -> list[Found]:
        current: dict[str, tuple[Signature, Path, list[Path]]] = {}
        for entry in sorted(self.folder.iterdir()):
            if not is_visible(entry.name):
                continue
            try:
                target = batch_target(entry, self.config.source.kind)
                if target is None:
                    self._once(entry.name, "ignoring %s: not a batch for a %s source", entry.name,
                               self.config.source.kind)
                    continue
                files = batch_files(entry, self._referenced(target))
                current[entry.name] = (signature(files), target, files)
            except (InputError, OSError) as err:
                self._once(entry.name, "ignoring %s for now: %s", entry.name, err)
        sigs = {name: sig for name, (sig, _, _) in current.items()}
        stable = stable_names(sigs, self.previous, self.ledger["seen"])
        self.previous = sigs
        hashed: dict[str, tuple[Signature, str]] = {}
        found = []
        for name in stable:
            sig, target, files = current[name]
            seen = self.ledger["seen"].get(name) or {}
            digest = seen["digest"] if seen.get("signature") == sig else content_hash(files, self.folder / name)
            hashed[name] = (sig, digest)
            found.append(Found(name, target, digest, max((s[2] for s in sig), default=0)))
        # entries still settling keep their old record until they are stable again
        keep = {n: (s["signature"], s["digest"]) for n, s in self.ledger["seen"].items()
                if n in current and n not in hashed}
        updated = record_seen(self.ledger, {**keep, **hashed})
        if updated["seen"] != self.ledger["seen"]:
            self._save(updated)
        return found

    def _referenced(self, target: Path) -> list[Path]:
        """Files a YAML batch's source names (they are part of the batch's content)."""
        if target.suffix.lower() not in YAML_SUFFIXES or not _has_source(target):
            return []
        from configs.schema import config_for_batch

        source = config_for_batch(self.config, target).source
        paths = [getattr(source, key, None) for key in ("path", "features", "labels", "gold")]
        return [Path(p) for p in [*paths, *getattr(source, "paths", [])] if p is not None]

    def _run(self, item: Found, stop: threading.Event) -> None:
        from configs.schema import config_for_batch

        record = self.ledger["batches"].get(item.digest) or {}
        attempt = int(record.get("attempts", 0)) + 1
        try:
            config_for_batch(self.config, item.target)
        except InputError as err:
            log.warning("batch %s rejected: %s", item.name, err)
            self._save(mark_rejected(self.ledger, item, str(err), _now()))
            return
        run_id = self._trigger(item, attempt)
        if run_id is None:
            return
        log.info("batch %s (%s): reprocess flow run %s, attempt %d", item.name, item.digest[:12], run_id, attempt)
        self._save(mark_running(self.ledger, item, run_id, _now()))
        self._settle(item.digest, run_id, stop)

    def _settle(self, digest: str, run_id: str, stop: threading.Event) -> None:
        """Wait for a run to reach a final state and record it (returns early when stopping)."""
        final = self._wait_final(run_id, stop)
        if final is None:
            return
        state_type, message = final
        name = self.ledger["batches"][digest].get("name")
        self._save(mark_finished(self.ledger, digest, state_type, message, _now(), self.interval))
        status = self.ledger["batches"][digest]["status"]
        level = logging.INFO if status == "done" else logging.WARNING
        log.log(level, "batch %s: run %s ended %s -> %s%s", name, run_id, state_type, status,
                f" (retry after {self.ledger['batches'][digest]['next_try']})" if status == "failed" else "")

    # -- Prefect at the edges
    def _trigger(self, item: Found, attempt: int) -> str | None:
        from prefect.deployments import run_deployment
        from prefect.exceptions import ObjectNotFound

        try:
            run = run_deployment(
                self.deployment, parameters={"batch_path": str(item.target)}, timeout=0,
                flow_run_name=f"reprocess {item.name} ({item.digest[:8]})", as_subflow=False,
                idempotency_key=idempotency_key(self.root, self.config.name, item.digest, attempt),
                tags=["annostyle", "new-batch"],
            )
        except ObjectNotFound:
            self._once("deployment", "deployment %s not found yet: will try again", self.deployment)
            return None
        return str(run.id)

    def _wait_final(self, run_id: str, stop: threading.Event) -> tuple[str, str | None] | None:
        """The run's final state type and message; a run whose process is gone is marked Crashed.

        Scheduled runs wait for an executor; a Pending, Running or Cancelling run with neither a
        state change nor a heartbeat event (`PREFECT_FLOWS_HEARTBEAT_FREQUENCY`) for 2.5 periods
        is lost (its serve process or worker was killed) and is crashed here, so it is retried.
        """
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound
        from prefect.settings import get_current_settings

        poll = min(max(self.interval / 2, 0.5), 5.0)
        heartbeat = self.heartbeat or get_current_settings().flows.heartbeat_frequency
        checked = 0.0
        with get_client(sync_client=True) as client:
            while not stop.is_set():
                try:
                    run = client.read_flow_run(run_id)
                except ObjectNotFound:
                    return "MISSING", "flow run not found on the Prefect server"
                state = run.state
                if state is not None and state.is_final():
                    return state.type.value, state.message
                if (state is not None and state.type.value in ("PENDING", "RUNNING", "CANCELLING") and heartbeat
                        and time.monotonic() - checked > heartbeat / 2):
                    checked = time.monotonic()
                    if is_lost(_now(), [state.timestamp, self._last_heartbeat(client, run_id, heartbeat)], heartbeat):
                        return self._crash(client, run_id, heartbeat)
                stop.wait(poll)
        return None

    @staticmethod
    def _last_heartbeat(client: Any, run_id: str, heartbeat: float) -> datetime | None:
        from prefect.events.filters import (
            EventFilter,
            EventNameFilter,
            EventOccurredFilter,
            EventResourceFilter,
        )

        since = _now() - timedelta(seconds=3 * heartbeat)
        page = client.read_events(EventFilter(
            event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
            resource=EventResourceFilter(id=[f"prefect.flow-run.{run_id}"]),
            occurred=EventOccurredFilter(since=since)), limit=50)
        return max((e.occurred for e in page.events), default=None)

    @staticmethod
    def _crash(client: Any, run_id: str, heartbeat: float) -> tuple[str, str]:
        from prefect.states import Crashed

        message = (f"no heartbeat for {2.5 * heartbeat:.0f}s: the process running it is gone "
                   "(marked crashed by the annostyle watcher; the batch is retried)")
        client.set_flow_run_state(run_id, Crashed(message=message), force=True)
        log.warning("flow run %s: %s", run_id, message)
        return "CRASHED", message

    # -- helpers
    def _save(self, ledger: dict[str, Any]) -> None:
        save_ledger(self.path, ledger)
        self.ledger = ledger

    def _once(self, key: str, message: str, *args: Any) -> None:
        if key not in self.reported:
            self.reported.add(key)
            log.info(message, *args)

    def run(self, stop: threading.Event) -> None:
        """Scan until `stop` is set; a failed scan (server away, I/O) is logged and retried."""
        log.info("watching %s for %s batches (every %gs); ledger %s", self.folder, self.config.name,
                 self.interval, self.path)
        failing = False
        while not stop.is_set():
            try:
                self.scan(stop)
                failing = False
            except Exception as err:  # the server away, a file gone mid-scan: the next scan tries again
                if failing:
                    log.warning("scan of %s failed again: %s", self.folder, err)
                else:
                    log.exception("scan of %s failed; trying again every %gs", self.folder, self.interval)
                failing = True
            stop.wait(self.interval)


def _now() -> datetime:
    return datetime.now(UTC)

