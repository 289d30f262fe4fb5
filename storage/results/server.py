"""What `annostyle server` returns, and the shared Prefect server's own record (`server.json`)."""

from __future__ import annotations

from typing import Literal

from storage.results import ResultModel, StageResult


class ServerState(ResultModel):
    """`<root>/prefect/server.json`, written by the server process once its port is bound.

    `idle_minutes` is how long it waits with no command using it before it stops (0: never).
    """

    pid: int
    port: int
    root: str
    started_at: str
    idle_minutes: float
    prefect_version: str

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class HostState(ResultModel):
    """`<root>/prefect/host.json`, written by the command host once its modules are imported and
    its socket is bound. A command runs there only when its `code_version` and `env_digest`
    (the environment the imported libraries read) equal the command's own."""

    pid: int
    socket: str
    root: str
    started_at: str
    code_version: str
    env_digest: str
    preload_seconds: float


class ServerResult(StageResult):
    """`annostyle server start|stop|status`: what was done and where the server answers.

    `status` is the server's state after the command: `started` (by this command), `running`
    (found answering), `stopped` (by this command) or `not running`. `host_pid` is the root's
    command host (`flows.host`) beside it, when one is ready.
    """

    action: Literal["start", "stop", "status"]
    status: Literal["started", "running", "stopped", "not running"]
    root: str
    pid: int | None = None
    api_url: str | None = None
    ui_url: str | None = None
    idle_minutes: float | None = None
    started_at: str | None = None
    log: str
    host_pid: int | None = None
    host_log: str | None = None
    seconds: float
