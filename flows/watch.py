"""The watcher's Prefect side: scan a folder and reprocess each new batch once, through the Prefect API.

What a batch is and when it is stable: `tasks.inbox`; the ledger (done, failed, rejected, running):
`tasks.ledger`. Here: the scan loop, `run_deployment` for each due batch, and polling its flow run
until a final state. The flow run's id is recorded before waiting on it, and runs are created
with an idempotency key (root, dataset, hash, attempt), so a watcher that restarts mid-run waits
on the same run instead of starting a second one; a run left Running by a process that died (no
state change and no heartbeat event for 2.5 heartbeat periods) is marked Crashed and retried.
Underneath, the dataset store skips a batch whose decoded content it already holds
("unchanged"), so even a run triggered twice appends nothing twice.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from configs.schema import config_for_batch, load_config
from errors import InputError
from storage.layout import RootLayout
from tasks.inbox import (
    batch_files,
    batch_target,
    content_hash,
    is_visible,
    referenced,
    signature,
    stable_names,
)
from tasks.ledger import (
    Found,
    Ledger,
    Signature,
    due,
    idempotency_key,
    is_lost,
    load_ledger,
    mark_finished,
    mark_rejected,
    mark_running,
    record_seen,
    running,
    save_ledger,
)

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

log = logging.getLogger(__name__)


class Watcher:
    """Scans `folder` every `interval` seconds and runs `deployment` once per new batch.

    Runs go through the Prefect API (`run_deployment`), so whoever executes the deployment (the
    serve process's runner or a worker) runs them; batches run one at a time, oldest first.
    """

    def __init__(self, config_path: Path, layout: RootLayout, folder: Path, interval: float, deployment: str,
                 heartbeat: float | None = None) -> None:
        self.config_path = Path(config_path).resolve()
        self.config = load_config(self.config_path)
        self.layout = layout
        self.folder = Path(folder).resolve()
        self.interval = float(interval)
        self.deployment = deployment
        self.heartbeat = heartbeat
        self.path = layout.watch_ledger(self.config.name)
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
            record = self.ledger.batches.get(item.digest)
            if record and record.status in ("done", "rejected") and record.name != item.name:
                self._once(f"same:{item.name}:{item.digest}", "%s has the bytes of batch %s (%s): not run again",
                           item.name, record.name, record.status)
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
                files = batch_files(entry, referenced(self.config, target))
                current[entry.name] = (signature(files), target, files)
            except (InputError, OSError) as err:
                self._once(entry.name, "ignoring %s for now: %s", entry.name, err)
        sigs = {name: sig for name, (sig, _, _) in current.items()}
        stable = stable_names(sigs, self.previous, self.ledger.seen)
        self.previous = sigs
        hashed: dict[str, tuple[Signature, str]] = {}
        found = []
        for name in stable:
            sig, target, files = current[name]
            seen = self.ledger.seen.get(name)
            digest = seen.digest if seen and seen.signature == sig else content_hash(files, self.folder / name)
            hashed[name] = (sig, digest)
            found.append(Found(name, target, digest, max((int(s[2]) for s in sig), default=0)))
        # entries still settling keep their old record until they are stable again
        keep = {n: (s.signature, s.digest) for n, s in self.ledger.seen.items() if n in current and n not in hashed}
        updated = record_seen(self.ledger, {**keep, **hashed})
        if updated.seen != self.ledger.seen:
            self._save(updated)
        return found

    def _run(self, item: Found, stop: threading.Event) -> None:
        record = self.ledger.batches.get(item.digest)
        attempt = (record.attempts if record else 0) + 1
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
        self._save(mark_finished(self.ledger, digest, state_type, message, _now(), self.interval))
        record = self.ledger.batches[digest]
        level = logging.INFO if record.status == "done" else logging.WARNING
        log.log(level, "batch %s: run %s ended %s -> %s%s", record.name, run_id, state_type, record.status,
                f" (retry after {record.next_try})" if record.status == "failed" else "")

    # -- Prefect at the edges
    def _trigger(self, item: Found, attempt: int) -> str | None:
        from prefect.deployments import run_deployment
        from prefect.exceptions import ObjectNotFound

        try:
            run = run_deployment(
                self.deployment, parameters={"batch_path": str(item.target)}, timeout=0,
                flow_run_name=f"reprocess {item.name} ({item.digest[:8]})", as_subflow=False,
                idempotency_key=idempotency_key(self.layout.root, self.config.name, item.digest, attempt),
                tags=["annostyle", "new-batch"],
            )
        except ObjectNotFound:
            self._once("deployment", "deployment %s not found yet: will try again", self.deployment)
            return None
        return str(cast("FlowRun", run).id)  # the sync call returns the run, not a coroutine

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
                    run = client.read_flow_run(UUID(run_id))
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
    def _save(self, ledger: Ledger) -> None:
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

