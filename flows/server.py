"""The root's shared Prefect server: started once by the first command that needs Prefect, reused
by every later one while it answers its health check, stopped by `annostyle server stop`.

Why: with no `PREFECT_API_URL`, Prefect 3 boots a temporary API server in a subprocess for every
command (`SubprocessASGIServer`: a uvicorn process, its migrations check, its services) and stops
it at exit: 8-14 s per command on 2 cores, and a SIGKILLed command left it running. Here one
server per root serves every command, so a command pays only an HTTP health check (a few ms).

- The server is `python -m flows.server ROOT`: Prefect's own app (`create_app`) under uvicorn, on
  a free port of 127.0.0.1 that it binds itself (no race for the port), with `PREFECT_HOME` =
  `<root>/prefect` (the same SQLite database the temporary servers used, so earlier runs stay
  visible) and Prefect's UI on. It leads its own session, started through a short-lived
  launcher, so it is never a child of a command: killing a command (even with SIGKILL) leaves
  it, and nothing else, behind. It writes `<root>/prefect/server.json` (pid, port) once its
  socket is bound and removes it when it stops.
- `<root>/prefect/server.lock` (an `flock`) is held while a command starts it: two commands
  never start two; the second waits and reuses the first's.
- Stale: a `server.json` whose pid is gone, is another program, or does not answer `/api/health`
  (three tries) is replaced; a live server of ours that stopped answering is killed first.
- Idle: each command holds a shared `flock` on `<root>/prefect/server.users` for its lifetime
  (the OS drops it when the command dies). A server started by a command stops itself after
  `ANNOSTYLE_SERVER_IDLE_MINUTES` (default 30) with no holder; `annostyle server start` starts
  one that stays (`--idle-minutes 0`) until `annostyle server stop`.
- `PREFECT_API_URL` set (the environment, or Prefect's settings in a test harness) is used as it
  is; `ANNOSTYLE_PREFECT_SERVER=ephemeral` keeps Prefect's temporary server per command.
- Beside it runs the root's command host (`python -P -m flows.host ROOT`, `flows.host`), launched
  the same way when a command asks for it (`ensure(..., host=True)`), while the server boots;
  it writes `<root>/prefect/host.json` once ready and stops when the server does (or with
  `annostyle server stop`). A host that imported other code than the command's is replaced.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TypeVar

from pydantic import ValidationError

from flows.version import code_version
from storage.files import atomic_write, atomic_write_json
from storage.layout import PREFECT_DATABASE, PREFECT_MEMO, RootLayout, prefect_template
from storage.results import ResultModel
from storage.results.server import HostState, ServerResult, ServerState

log = logging.getLogger("flows.server")  # also when run as `python -m flows.server`

MODE_ENV = "ANNOSTYLE_PREFECT_SERVER"  # "root" (default): the root's shared server; "ephemeral": Prefect's own
IDLE_ENV = "ANNOSTYLE_SERVER_IDLE_MINUTES"
DEFAULT_IDLE_MINUTES = 30.0
R = TypeVar("R", bound=ResultModel)
START_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"  # set by flows.settings (120)
MARKER = "flows.server"  # in the server's command line: how a pid is known to be ours
HOST_MARKER = "flows.host"  # the command host's
HOST_ENV = "ANNOSTYLE_HOST"  # "on" (default): flow commands run in the root's command host; "off": in their own
# what the libraries a host imports read from the environment when imported (or may): a command
# runs in a host only when these equal its own
HOST_ENV_PREFIXES = ("PREFECT_", "MLFLOW_", "ANNOSTYLE_", "NUMBA_", "OMP_", "MKL_", "OPENBLAS_", "KMP_", "GOMP_",
                     "TORCH", "PYTORCH_", "CUDA", "NVIDIA_", "PYTHON", "MPL", "DASK_", "LD_", "XDG_", "GIT_",
                     "LC_", "LANG", "HF_", "TF_", "ARROW_", "JOBLIB_", "LOKY_", "SKLEARN_")
HOST_ENV_NAMES = ("HOME", "TMPDIR", "TZ", "PATH", "VIRTUAL_ENV", "DO_NOT_TRACK", "USER")

# the launcher starts the server in a session of its own, prints its pid and exits at once, so the
# server is never a child of the command (no zombie, nothing of the command's group to kill)
LAUNCH = ("import subprocess, sys\n"
          "log = open(sys.argv[1], 'ab')\n"
          "p = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, "
          "start_new_session=True, close_fds=True)\n"
          "print(p.pid)\n")

_USERS: list[IO[str]] = []  # the users-lock handles this process holds (kept open until it exits)


# ----------------------------------------------------------------------------- the client side
def api_url_in_use() -> str | None:
    """The Prefect API this process is already told to use: `PREFECT_API_URL` in the environment,
    or, once Prefect is imported, in its settings (where a test harness puts its server)."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    if "prefect" in sys.modules:
        from prefect.settings import PREFECT_API_URL

        return PREFECT_API_URL.value() or None
    return None


def shared_mode() -> bool:
    mode = os.environ.get(MODE_ENV, "root").strip().lower()
    if mode not in ("root", "ephemeral"):
        from errors import InputError

        raise InputError(MODE_ENV, None, mode, "must be `root` (the root's shared server) or `ephemeral`")
    return mode == "root"


def idle_minutes_default() -> float:
    value = os.environ.get(IDLE_ENV)
    try:
        return float(value) if value else DEFAULT_IDLE_MINUTES
    except ValueError:
        from errors import InputError

        raise InputError(IDLE_ENV, None, value, "must be a number of minutes (0: never stop)") from None


def host_enabled() -> bool:
    mode = os.environ.get(HOST_ENV, "on").strip().lower()
    if mode not in ("on", "off"):
        from errors import InputError

        raise InputError(HOST_ENV, None, mode, "must be `on` (commands run in the root's command host) or `off`")
    return mode == "on"


def env_digest(env: Mapping[str, str]) -> str:
    """A hash of what imported libraries may have read from `env` (HOST_ENV_PREFIXES, HOST_ENV_NAMES)
    and of the interpreter: equal digests make a host's imports valid for a command."""
    kept = {k: v for k, v in env.items() if k.startswith(HOST_ENV_PREFIXES) or k in HOST_ENV_NAMES}
    payload = json.dumps([sys.executable, sys.version, sorted(kept.items())])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@contextlib.contextmanager
def connected(layout: RootLayout, start: bool = True, heartbeats: bool = True) -> Iterator[str | None]:
    """Run the body against the root's shared server: started if `start` and none answers, else
    used only when one already answers. Yields its API URL, or None when another API is in use
    (or ephemeral mode is chosen, or none answers and `start` is False). Without `heartbeats`
    the body's flow runs send none (one settings update with the URL: each costs 0.1 s)."""
    url: str | None = None
    if not api_url_in_use() and shared_mode():
        if start:
            url = ensure(layout, idle_minutes_default()).api_url
        else:
            hold_users(layout)
            state = running(layout)
            url = state.api_url if state else None
    if "prefect" not in sys.modules:  # Prefect reads its settings from the environment when imported
        if url is not None:
            os.environ["PREFECT_API_URL"] = url
        yield url
        return
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    updates: dict[Any, Any] = {} if url is None else {PREFECT_API_URL: url}
    if not heartbeats:
        updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
    with temporary_settings(updates) if updates else contextlib.nullcontext():
        yield url


def hold_users(layout: RootLayout) -> None:
    """Take a shared lock on `server.users` for the rest of this process: the server does not
    stop for idleness while any command holds one (the OS drops it when the process dies)."""
    if _USERS:
        return
    layout.prefect_home.mkdir(parents=True, exist_ok=True)
    handle = layout.server_users.open("a")
    fcntl.flock(handle, fcntl.LOCK_SH)  # waits while an idle server is shutting down
    _USERS.append(handle)


def read_state(layout: RootLayout) -> ServerState | None:
    return _read_record(layout.server_state, ServerState)


def _alive(pid: int) -> bool:
    """True while `pid` is a running process (a zombie is not; ours is reaped)."""
    with contextlib.suppress(ChildProcessError, OSError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def is_ours(state: ServerState, layout: RootLayout) -> bool:
    """The recorded pid is alive and is this root's server (not a reused pid)."""
    return _is_process(state.pid, MARKER, layout)


def _is_process(pid: int, marker: str, layout: RootLayout) -> bool:
    """`pid` is alive and runs `python -m <marker> <root>` for this root (not a reused pid)."""
    if not _alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc: the pid is alive, trust the record
    return marker.encode() in cmdline and str(layout.root).encode() in cmdline


def answers(state: ServerState, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(f"{state.api_url}/health", timeout=timeout) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def running(layout: RootLayout, tries: int = 3) -> ServerState | None:
    """The root's server when it is ours and answers its health check (up to `tries` times)."""
    state = read_state(layout)
    if state is None or not is_ours(state, layout):
        return None
    for attempt in range(tries):
        if answers(state):
            return state
        if attempt + 1 < tries:
            time.sleep(1.0)
    return None


def read_host(layout: RootLayout) -> HostState | None:
    return _read_record(layout.host_state, HostState)


def _read_record(path: Path, model: type[R]) -> R | None:
    """A record its process wrote (`server.json`, `host.json`); None if absent or unreadable."""
    try:
        return model.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None


def host_running(layout: RootLayout) -> HostState | None:
    """The root's command host when its record names a live host process of this root."""
    state = read_host(layout)
    if state is None or not _is_process(state.pid, HOST_MARKER, layout):
        return None
    return state


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed, or the process dies
        yield


def _terminate(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM to the server's process group (it leads its own), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.1)


def _server_env(layout: RootLayout) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_SERVER_UI_ENABLED")}
    env.update(PREFECT_HOME=str(layout.prefect_home), PREFECT_UI_ENABLED="true",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


def _launch(layout: RootLayout, idle_minutes: float) -> int:
    """Start the server detached from this process; its pid."""
    command = [sys.executable, "-m", MARKER, str(layout.root), "--idle-minutes", str(idle_minutes)]
    return _detached(command, layout.server_log, _server_env(layout), layout)


def _detached(command: list[str], log_path: Path, env: Mapping[str, str], layout: RootLayout) -> int:
    """Start `command` in a session of its own through the launcher (never this process's child); its pid."""
    done = subprocess.run([sys.executable, "-c", LAUNCH, str(log_path), *command], env=dict(env), cwd=layout.root,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


def start_timeout() -> float:
    """Seconds the server or the host may take to be ready (flows.settings sets 120)."""
    return float(os.environ.get(START_TIMEOUT_ENV) or 120)


def _launch_host(layout: RootLayout) -> int:
    """Start the command host with this command's environment (its imports read it); its pid."""
    log.info("starting the root's command host (log %s)", layout.host_log)
    return _detached([sys.executable, "-P", "-m", HOST_MARKER, str(layout.root)], layout.host_log, os.environ,
                     layout)


def _wait_host(layout: RootLayout, pid: int) -> HostState | None:
    """The host's record once it is ready; None (with a warning) when it failed or is too slow."""
    timeout = start_timeout()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read_host(layout)
        if state is not None and state.pid == pid:
            return state
        if not _alive(pid):
            log.warning("the command host (pid %d) exited before it was ready: running here; its log %s ends:\n%s",
                        pid, layout.host_log, _log_tail(layout.host_log))
            return None
        time.sleep(0.05)
    _terminate(pid)
    log.warning("the command host was not ready within %.0f s: running here (log %s)", timeout, layout.host_log)
    return None


def _launch_host_if_needed(layout: RootLayout) -> int | None:
    """Launch a host unless one for this code runs (one for other code is stopped first); call
    under the host lock. The new host's pid, or None."""
    state = host_running(layout)
    if state is not None and state.code_version == code_version():
        return None
    if state is not None:
        log.info("the root's command host (pid %d) runs other code: replacing it", state.pid)
        _terminate(state.pid)
    layout.host_state.unlink(missing_ok=True)
    return _launch_host(layout)


def _log_tail(path: Path, chars: int = 3000) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-chars:]
    return ""


def _wait_ready(layout: RootLayout, pid: int) -> ServerState:
    timeout = start_timeout()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            raise RuntimeError(f"the Prefect server (pid {pid}) exited before it answered; its log "
                               f"{layout.server_log} ends:\n{_log_tail(layout.server_log)}")
        state = read_state(layout)
        if state is not None and state.pid == pid and answers(state, timeout=2.0):
            return state
        time.sleep(0.1)
    _terminate(pid)
    raise RuntimeError(f"the Prefect server did not answer within {timeout:.0f} s; log {layout.server_log}:\n"
                       f"{_log_tail(layout.server_log)}")


def _first_call(state: ServerState) -> None:
    """Make the new server's first `/admin/version` call, which every Prefect client makes once
    and which takes the server 0.5 s the first time only (lazy set-up): the starter pays it,
    not the first command's flow."""
    with contextlib.suppress(OSError):
        urllib.request.urlopen(f"{state.api_url}/admin/version", timeout=30).close()


def _result(action: Any, status: Any, layout: RootLayout, state: ServerState | None, started: float,
            host: HostState | None = None) -> ServerResult:
    return ServerResult(action=action, status=status, root=str(layout.root), log=str(layout.server_log),
                        pid=state.pid if state else None, api_url=state.api_url if state else None,
                        ui_url=state.ui_url if state else None, idle_minutes=state.idle_minutes if state else None,
                        started_at=state.started_at if state else None, host_pid=host.pid if host else None,
                        host_log=str(layout.host_log) if host else None,
                        seconds=round(time.perf_counter() - started, 3))


def ensure(layout: RootLayout, idle_minutes: float, host: bool = False) -> ServerResult:
    """The root's server, started if none of ours answers (replacing a stale one), and with `host`
    its command host for this code (launched first, so that it imports while the server boots);
    this process holds the users lock from here on."""
    started = time.perf_counter()
    hold_users(layout)
    with _exclusive(layout.host_lock) if host else contextlib.nullcontext():
        launched = _launch_host_if_needed(layout) if host else None
        state, status = running(layout), "running"
        if state is None:
            state, status = _start(layout, idle_minutes)
        host_state = _wait_host(layout, launched) if launched is not None else host_running(layout)
    return _result("start", status, layout, state, started, host_state)


def _start(layout: RootLayout, idle_minutes: float) -> tuple[ServerState, str]:
    """Start the server unless another command did while we waited for the lock."""
    with _exclusive(layout.server_lock):
        state = running(layout)
        if state is not None:
            return state, "running"
        stale = read_state(layout)
        if stale is not None and is_ours(stale, layout):
            log.warning("the root's Prefect server (pid %d) does not answer: replacing it", stale.pid)
            _terminate(stale.pid)
        layout.server_state.unlink(missing_ok=True)
        log.info("starting the root's Prefect server (log %s)", layout.server_log)
        state = _wait_ready(layout, _launch(layout, idle_minutes))
        _first_call(state)
    log.info("Prefect server on %s (UI %s), pid %d; `annostyle server stop --root %s` stops it",
             state.api_url, state.ui_url, state.pid, layout.root)
    return state, "started"


def stop(layout: RootLayout) -> ServerResult:
    """Stop the root's server and its command host (commands still using them go on without)."""
    started = time.perf_counter()
    with _exclusive(layout.host_lock):
        host = host_running(layout)
        if host is not None:
            _terminate(host.pid)
        layout.host_state.unlink(missing_ok=True)
    with _exclusive(layout.server_lock):
        state = read_state(layout)
        if state is None or not is_ours(state, layout):
            layout.server_state.unlink(missing_ok=True)
            return _result("stop", "not running", layout, None, started, host)
        _terminate(state.pid)
        layout.server_state.unlink(missing_ok=True)
    return _result("stop", "stopped", layout, state, started, host)


def status(layout: RootLayout) -> ServerResult:
    started = time.perf_counter()
    state = running(layout, tries=1)
    return _result("status", "running" if state else "not running", layout, state, started, host_running(layout))


# ----------------------------------------------------------------------------- `annostyle server`
def cli_run(args: argparse.Namespace) -> ServerResult:
    layout = RootLayout(args.root)
    if args.action == "stop":
        return stop(layout)
    if args.action == "status":
        return status(layout)
    idle = args.idle_minutes if args.idle_minutes is not None else 0.0
    return ensure(layout, idle, host=host_enabled())


def cli_print(result: ServerResult) -> None:
    if result.status in ("started", "running"):
        idle = f"stops after {result.idle_minutes:g} idle minutes" if result.idle_minutes else "stays until stopped"
        print(f"Prefect server {result.status} for {result.root}: pid {result.pid}, {idle}")
        print(f"  API {result.api_url}   UI {result.ui_url}   log {result.log}")
        if result.host_pid:
            print(f"  command host pid {result.host_pid} (commands run in a fork of it)   log {result.host_log}")
        print(f"  other programs: export PREFECT_API_URL={result.api_url}")
        print(f"  stop it: annostyle server stop --root {result.root}")
    else:
        print(f"Prefect server for {result.root}: {result.status}")


# ----------------------------------------------------------------------------- the server process
def _watch_idle(server: Any, layout: RootLayout, idle_seconds: float) -> None:
    """Stop the server once no command has held the users lock for `idle_seconds`."""
    idle_since = time.monotonic()
    with layout.server_users.open("a") as handle:
        while not server.should_exit:
            time.sleep(min(10.0, max(idle_seconds / 4, 0.5)))
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                idle_since = time.monotonic()  # a command holds it
                continue
            if time.monotonic() - idle_since >= idle_seconds:
                log.warning("no command used this server for %.0f s: stopping", idle_seconds)
                server.should_exit = True  # keep the lock: a new command waits, then starts a new one
                return
            fcntl.flock(handle, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------- the database template
DATABASE_ENVS = ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL")


def _template() -> Path:
    from importlib.metadata import version  # Prefect's version without importing Prefect (1.5 s)

    return prefect_template(version("prefect"))


def _sound(database: Path) -> bool:
    """A readable SQLite file that passes its quick check and holds Prefect's migration record."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            ok = db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
            return ok and db.execute("SELECT count(*) FROM alembic_version").fetchone()[0] == 1
    except sqlite3.Error:
        return False


def seed_database(layout: RootLayout) -> Path | None:
    """Start a new root's database from the template, if there is a sound one (the template's
    folder, or None): Prefect's migrations and block registration on an empty database took 6.7
    of a fresh server's 10.4 s to answer (3.7 s with a migrated one). Nothing happens for a root
    that has a database, or when the environment names another database."""
    if any(os.environ.get(name) for name in DATABASE_ENVS) or layout.prefect_database.exists():
        return None
    template = _template()
    if not (template / PREFECT_DATABASE).is_file():
        return None
    if not _sound(template / PREFECT_DATABASE):
        log.warning("the Prefect database template %s is damaged: migrating a new database instead "
                    "(`python -m flows.server --template` makes a new one)", template / PREFECT_DATABASE)
        return None
    layout.prefect_home.mkdir(parents=True, exist_ok=True)
    for name in (PREFECT_MEMO, PREFECT_DATABASE):  # the database last: its presence says the copy is whole
        source = template / name
        if source.is_file():
            atomic_write(layout.prefect_home / name, functools.partial(shutil.copyfile, source))
    return template


def make_template() -> Path:
    """Make the database template of this environment's Prefect version, unless a sound one is
    there: a server started and stopped on a scratch root migrates an empty database, which is
    copied (SQLite's backup, whole or not at all) beside its block registration memo."""
    target = _template()
    if _sound(target / PREFECT_DATABASE):
        return target
    with tempfile.TemporaryDirectory(prefix="annostyle-prefect-") as scratch:
        layout = RootLayout(Path(scratch))
        ensure(layout, 0.0)
        stop(layout)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
        staging.chmod(0o755)  # mkdtemp makes it private; the environment may be shared
        with contextlib.closing(sqlite3.connect(layout.prefect_database)) as source, \
                contextlib.closing(sqlite3.connect(staging / PREFECT_DATABASE)) as copy:
            source.backup(copy)
        if (layout.prefect_home / PREFECT_MEMO).is_file():
            shutil.copyfile(layout.prefect_home / PREFECT_MEMO, staging / PREFECT_MEMO)
    shutil.rmtree(target, ignore_errors=True)  # a damaged one
    try:
        os.replace(staging, target)
    except OSError:  # another process made it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
    return target


def serve_forever(root: Path, idle_minutes: float) -> None:
    """Run Prefect's API and UI on a free loopback port until SIGTERM (or idleness)."""
    layout = RootLayout(root)
    if (template := seed_database(layout)) is not None:
        log.info("the database starts from the template %s", template)
    # IPPROTO_TCP named, as uvicorn's own bind gets it from getaddrinfo: asyncio sets TCP_NODELAY
    # only on connections of such a socket; without it every response on a kept-alive connection
    # waited for the client's delayed ACK (48 ms a call against 4 ms)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # before Prefect reads its settings: the UI must call this server, not the default port
    os.environ.update(PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=str(port),
                      PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api")
    import prefect
    import uvicorn
    from prefect.server.api.server import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(final=True), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on", timeout_graceful_shutdown=5))
    state = ServerState(pid=os.getpid(), port=port, root=str(layout.root),
                        started_at=datetime.now(UTC).isoformat(timespec="seconds"), idle_minutes=idle_minutes,
                        prefect_version=str(prefect.__version__))
    atomic_write_json(layout.server_state, json.loads(state.model_dump_json()))
    if idle_minutes > 0:
        threading.Thread(target=_watch_idle, args=(server, layout, idle_minutes * 60), daemon=True,
                         name="annostyle-idle").start()
    try:
        server.run(sockets=[sock])
    finally:
        current = read_state(layout)
        if current is not None and current.pid == os.getpid():
            layout.server_state.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.server", description="the root's shared Prefect server")
    parser.add_argument("root", type=Path, nargs="?")
    parser.add_argument("--idle-minutes", type=float, default=DEFAULT_IDLE_MINUTES)
    parser.add_argument("--template", action="store_true",
                        help="make the environment's Prefect database template (new roots' servers start from it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    if args.template:
        print(f"Prefect database template: {make_template()}")
        return 0
    if args.root is None:
        parser.error("the root folder is required")
    serve_forever(args.root, args.idle_minutes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
