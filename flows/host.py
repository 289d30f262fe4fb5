"""The root's command host: a warm process that runs each command in a fork of itself.

Why: a short command spent most of its time importing. `import prefect, mlflow, zarr, pandas,
sklearn.cluster, crowdkit.aggregation, matplotlib.pyplot` takes 5.5 s on 2 cores, torch and the
`torch._dynamo` its optimiser imports on first use 2-3 s more, and every command paid it again.
The host pays it once per root, like Gradle's daemon: it stays beside the root's Prefect server
(`flows.server` starts it while the server boots and stops it with the server), and every flow
command runs in a child forked from it, with every module already imported (copy-on-write).

- `python -P -m flows.host ROOT` imports our packages and the libraries their stages import
  lazily (`LIBRARIES`), binds `<root>/prefect/host.sock` (mode 0600; only this user's uid is
  served, checked with SO_PEERCRED), writes `host.json` (pid, socket, code version, environment
  digest) and serves until SIGTERM or until the root's server is gone.
- A command (`flows.cli`) whose root has a host with its own code version and environment digest
  (`flows.server.env_digest`: what imported libraries may have read) sends its arguments,
  working directory and environment, and passes its stdin, stdout and stderr (SCM_RIGHTS). The
  host forks; the child leads a session of its own, takes those as fds 0-2, the command's
  directory and environment, runs the command (`flows.commands.run_argv`) and the exit handlers
  as the interpreter would, sends the exit code and ends; the command exits with that code.
- Signals: the command forwards SIGINT, SIGTERM and SIGHUP to the child's main thread (Ctrl-C is
  a KeyboardInterrupt there, exit 130). When the command dies, even by SIGKILL, its end of the
  socket closes and the child kills its own process group: nothing it ran outlives it.
- The host starts no thread and no CUDA, OpenMP or database connection before it forks: those
  are first used in the children. It prepares the root's MLflow store once (`prepare`), in a
  child of its own, before it is ready.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import json
import logging
import os
import pkgutil
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, NoReturn

from flows.commands import FLOW_COMMANDS, check_configs, run_argv
from flows.server import (
    api_url_in_use,
    ensure,
    env_digest,
    host_enabled,
    host_running,
    idle_minutes_default,
    read_host,
    read_state,
    shared_mode,
    start_timeout,
)
from flows.server import is_ours as server_is_ours
from flows.settings import flush_output
from flows.version import PACKAGES, code_version
from storage.files import atomic_write_json
from storage.layout import RootLayout
from storage.results.server import HostState

log = logging.getLogger("flows.host")  # also when run as `python -m flows.host`

# what the stages import inside functions (our own modules are all imported); umap-learn is
# left out: opt-in (`analyze.umap`) and its import compiles kernels for seconds to a minute
LIBRARIES = ("torch", "torch._dynamo", "mlflow.pytorch", "mlflow.models", "mlflow.store.tracking.sqlalchemy_store",
             "matplotlib.figure", "matplotlib.backends.backend_agg", "seaborn", "crowdkit.aggregation",
             "sklearn.metrics", "sklearn.neighbors", "sklearn.manifold", "sklearn.cluster", "sklearn.linear_model",
             "scipy.cluster.hierarchy", "scipy.stats", "dask.array", "distributed", "numba", "krippendorff")
SKIP = ("flows.host", "flows.cli")  # this module (run as __main__) and the entry point
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
MAX_REQUEST = 16 * 2 ** 20
_LENGTH = struct.Struct("!Q")


# ----------------------------------------------------------------------------- the command's side
def run_in_host(args: argparse.Namespace, argv: list[str]) -> int | None:
    """Run this command in the root's command host, started with the root's server if need be;
    its exit code, or None when it runs in this process instead: hosting is off
    (ANNOSTYLE_HOST=off), another Prefect API is in use, or the host imported for another
    environment or failed to start (said in the log). With a host up the configs are checked in
    the child; without one, here, so that a bad config starts nothing."""
    from errors import InputError

    try:
        if not host_enabled() or api_url_in_use() or not shared_mode():
            return None
        layout = RootLayout(args.root)
        digest = env_digest(os.environ)
        host = host_running(layout)
        if host is None or host.code_version != code_version():
            if args.command not in FLOW_COMMANDS:
                return None  # `verify` and `runs` use a host that runs; they start none
            check_configs(args)
            ensure(layout, idle_minutes_default(), host=True)
            host = host_running(layout)
    except InputError as err:
        print(f"annostyle: error: {err}", file=sys.stderr)
        return 2
    if host is None or host.code_version != code_version():
        return None
    if host.env_digest != digest:
        log.info("the root's command host (pid %d) was started from another environment: running here", host.pid)
        return None
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with _address(Path(host.socket)) as address:
            sock.connect(address)
    except OSError as err:
        log.warning("the root's command host (pid %d) does not answer (%s): running here", host.pid, err)
        return None
    with sock:
        return _converse(sock, argv, digest, layout)


def _converse(sock: socket.socket, argv: list[str], digest: str, layout: RootLayout) -> int | None:
    """Hand the command to the host; wait for its exit code, forwarding signals meanwhile."""
    body = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "code_version": code_version(),
                       "env_digest": digest}).encode()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    fds, opened = _std_fds()
    try:
        socket.send_fds(sock, [_LENGTH.pack(len(body))], fds)
        sock.sendall(body)
    finally:
        for fd in opened:
            os.close(fd)
    reader = sock.makefile("rb")
    reply = _read(reader)
    if reply is None or "refused" in reply:
        log.info("the root's command host refused the command (%s): running here",
                 reply.get("refused") if reply else "it closed the connection")
        return None
    log.info("running in the root's command host as its child, pid %s", reply.get("pid"))
    forwarded: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        forwarded.append(signum)
        with contextlib.suppress(OSError):
            sock.sendall(json.dumps({"signal": signum}).encode() + b"\n")

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        while reply is not None and "exit" not in reply:
            reply = _read(reader)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if reply is not None:
        return int(reply["exit"])
    if forwarded:  # it died of the signal we passed on: so do we, as a command run here would
        signal.signal(forwarded[-1], signal.SIG_DFL)
        os.kill(os.getpid(), forwarded[-1])
        return 128 + forwarded[-1]
    print(f"annostyle: error: the command's process in the root's command host ended without an exit code "
          f"(host log {layout.host_log})", file=sys.stderr)
    return 1


def _std_fds() -> tuple[list[int], list[int]]:
    """This process's fds 0-2 to pass on (/dev/null for one that is closed), and those opened here."""
    fds, opened = [], []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            fds.append(null)
            opened.append(null)
    return fds, opened


def _read(reader: IO[bytes]) -> dict[str, Any] | None:
    """The next message (one JSON object per line), or None at the end of the connection."""
    line = reader.readline()
    if not line:
        return None
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


@contextlib.contextmanager
def _address(path: Path) -> Iterator[str]:
    """`path` as an AF_UNIX address, which may not pass 107 bytes: itself, or the same file
    reached through a descriptor of its folder (Linux's /proc/self/fd)."""
    if len(os.fsencode(path)) < 100:
        yield str(path)
        return
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{folder}/{path.name}"
    finally:
        os.close(folder)


# ----------------------------------------------------------------------------- the host process
def preload() -> list[str]:
    """Import every module of our packages and `LIBRARIES`, and fill the caches every child
    would fill again (`storage.tracking.warm_caches`); the names that failed (logged)."""
    failed = []
    names = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        names += [info.name for info in pkgutil.walk_packages(module.__path__, f"{package}.")]
    for name in [n for n in names if n not in SKIP] + list(LIBRARIES):
        try:
            importlib.import_module(name)
        except Exception as err:  # a missing optional library is imported by the child that needs it
            log.warning("not preloaded: %s (%s)", name, err)
            failed.append(name)
    from storage.tracking import warm_caches

    warm_caches()
    return failed


def serve(root: Path) -> None:
    """Import, bind the socket, write `host.json`, then fork a child per command until SIGTERM or
    until the root's server is gone."""
    layout = RootLayout(root)
    started = time.perf_counter()
    launched_env = dict(os.environ)
    preload()
    # what the imports set (e.g. torch's KMP_* settings): each child gets them over its command's environment
    imported_env = {k: v for k, v in os.environ.items() if launched_env.get(k) != v}
    prepare(layout)
    threads = threading.enumerate()
    if len(threads) > 1:  # fork copies only this thread: a library that started one would be broken
        log.warning("threads running before the first fork: %s", [t.name for t in threads])
    layout.host_socket.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mask = os.umask(0o077)
    try:
        with _address(layout.host_socket) as address:
            listener.bind(address)
    finally:
        os.umask(mask)
    listener.listen(64)
    listener.settimeout(0.25)  # how soon SIGTERM, or the server's end, is noticed
    state = HostState(pid=os.getpid(), socket=str(layout.host_socket), root=str(layout.root),
                      started_at=datetime.now(UTC).isoformat(timespec="seconds"), code_version=code_version(),
                      env_digest=env_digest(launched_env), preload_seconds=round(time.perf_counter() - started, 3))
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
    atomic_write_json(layout.host_state, json.loads(state.model_dump_json()))
    log.warning("ready in %.1f s: %d modules imported", state.preload_seconds, len(sys.modules))
    server = _ServerWatch(layout)
    try:
        while not stopping and server.alive():
            _reap()
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                _start_child(listener, conn, state, imported_env)
            except Exception:
                log.exception("a command could not be started")
    finally:
        listener.close()
        current = read_host(layout)
        if current is not None and current.pid == os.getpid():
            layout.host_state.unlink(missing_ok=True)
            layout.host_socket.unlink(missing_ok=True)


def prepare(layout: RootLayout) -> None:
    """What the first command on a fresh root would do once, done before the host is ready: the
    MLflow store's schema (about 1 s of migrations). In a short-lived child, so that no database
    connection is left in the host to be copied into every command."""
    from storage.tracking import ensure_store  # MLflow: not in the command's own process

    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            ensure_store(layout)
        except BaseException:
            log.exception("preparing the MLflow store failed (the first command that records will say why)")
            code = 1
        os._exit(code)
    os.waitpid(pid, 0)


class _ServerWatch:
    """Whether the root's server still runs: the host stops when it has gone (or never came up
    within the start time-out)."""

    def __init__(self, layout: RootLayout) -> None:
        self.layout = layout
        self.seen = False
        self.since = time.monotonic()
        self.grace = start_timeout()

    def alive(self) -> bool:
        state = read_state(self.layout)
        if state is not None and server_is_ours(state, self.layout):
            self.seen = True
            return True
        if self.seen or time.monotonic() - self.since > self.grace:
            log.warning("the root's Prefect server is gone: stopping")
            return False
        return True


def _reap() -> None:
    """Collect the children that ended (no zombies)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _start_child(listener: socket.socket, conn: socket.socket, state: HostState,
                 imported_env: dict[str, str]) -> None:
    """Read one command's request and fork its child (or refuse it)."""
    fds: list[int] = []
    try:
        conn.settimeout(10.0)  # a client that connects and says nothing does not hold the host
        _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                              struct.calcsize("3i")))
        if uid != os.getuid():
            log.warning("refused a connection from uid %d", uid)
            return
        head, fds, _flags, _ = socket.recv_fds(conn, _LENGTH.size, 3)
        head += _receive(conn, _LENGTH.size - len(head))
        (size,) = _LENGTH.unpack(head)
        if len(fds) != 3 or size > MAX_REQUEST:
            log.warning("refused a malformed request")
            return
        request = json.loads(_receive(conn, size))
        if (request.get("code_version"), request.get("env_digest")) != (state.code_version, state.env_digest):
            _send(conn, {"refused": "another code version or environment"})
            return
        if os.fork() == 0:
            _child(listener, conn, request, fds, imported_env)
    finally:
        for fd in fds:
            os.close(fd)
        conn.close()


def _receive(conn: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left > 0:
        chunk = conn.recv(min(left, 2 ** 20))
        if not chunk:
            raise ConnectionError("the command closed its connection mid-request")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


def _child(listener: socket.socket, conn: socket.socket, request: dict[str, Any], fds: list[int],
           imported_env: dict[str, str]) -> NoReturn:
    """The command, in the forked child: its session, fds, directory and environment; then its
    exit handlers, its exit code to the command, and the end of this process."""
    code = 1
    try:
        listener.close()
        os.setsid()
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        sys.stdout.reconfigure(line_buffering=sys.stdout.isatty())  # type: ignore[union-attr]
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ.update(imported_env)
        sys.argv = ["annostyle", *request["argv"]]
        logging.root.handlers.clear()  # the host's log; the command sets up its own on its stderr
        conn.settimeout(None)
        _send(conn, {"pid": os.getpid()})
        threading.Thread(target=_follow, args=(conn, threading.get_ident()), daemon=True,
                         name="annostyle-command").start()
        code = run_argv(list(request["argv"]))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int | None):
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        _end(conn, code)


def _follow(conn: socket.socket, main_thread: int) -> None:
    """Pass the command's forwarded signals to the main thread; when the command is gone, kill
    this child's process group (itself and everything it started)."""
    with contextlib.suppress(OSError, ValueError):
        for line in conn.makefile("rb"):
            signum = json.loads(line).get("signal")
            if signum in FORWARDED:
                signal.pthread_kill(main_thread, signum)
    os.killpg(0, signal.SIGKILL)


def _end(conn: socket.socket, code: int) -> NoReturn:
    """What the interpreter does at exit (join threads, run the exit handlers, which drain
    Prefect's workers), flush, then the exit code to the command and `os._exit`: the teardown of
    every module would cost seconds and write nothing."""
    with contextlib.suppress(BaseException):
        threading._shutdown()  # type: ignore[attr-defined]
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    flush_output()
    with contextlib.suppress(BaseException):
        _send(conn, {"exit": code})
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.host", description="the root's command host")
    parser.add_argument("root", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(args.root)
    flush_output()
    os._exit(0)  # the teardown of every imported module took 2-3 s and would write nothing


if __name__ == "__main__":
    sys.exit(main())
