"""The `annostyle` command line: one subcommand per flow (`flows.commands`).

Commands that run flows use the root's shared Prefect server (`flows.server`: started by the
first, reused by the rest) unless PREFECT_API_URL names one, and run in the root's command host
(`flows.host`: a warm process that forks one child per command) unless ANNOSTYLE_HOST=off; the
rest run in this process. Logs go to stderr; with `--json` the last line of stdout is one JSON
object. Exit codes: 0 done, 2 bad input (config, data, arguments), 1 anything else.
"""

from __future__ import annotations

import atexit
import os
import sys

from flows.commands import HOSTED, parse_argv, run_command
from flows.settings import flush_output

_EXIT: dict[str, int] = {}  # the exit code, once `main` has returned one


def _exit_without_teardown() -> None:
    """Last at exit of the `annostyle` process: flush, then end it without the interpreter's
    teardown of every imported module (3-8 s on 2 cores once Prefect, MLflow and scikit-learn are
    loaded; nothing of ours is left to write by then: Prefect's workers drained before atexit).
    An uncaught exception or Ctrl-C (no code recorded) takes the normal way out."""
    code = _EXIT.get("code")
    if code is None:
        return
    flush_output()  # logging's own exit handler was registered before this one, so it would run after it
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    """The command line; `argv` None means this process is the `annostyle` command itself."""
    if argv is None:
        atexit.register(_exit_without_teardown)
    code = _main(argv)
    _EXIT["code"] = code
    return code


def _main(argv: list[str] | None) -> int:
    args = parse_argv(argv)
    if argv is None and args.command in HOSTED:
        from flows.host import run_in_host

        code = run_in_host(args, sys.argv[1:])
        if code is not None:
            return code
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
