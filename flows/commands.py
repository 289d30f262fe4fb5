"""Every `annostyle` command: its flow module, its options, and how it runs in a process.

Each subcommand lives in a flow module that defines `cli_run(args)`, which returns a typed
result (a `storage.results.StageResult`), and `cli_print(result)`; its extra options are
declared here, so that `--help` stays fast and Prefect loads only after the root's settings are
in place. `flows.cli` runs a command here or in the root's command host (`flows.host`), which
runs it with `run_argv` in a fork of itself.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
from pathlib import Path

from flows.settings import DEFAULT_ROOT, apply_defaults, heartbeat_setting, setup_logging

DESCRIPTION = "The `annostyle` command line: one subcommand per flow."
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("flows.run", "the whole pipeline: ingest, train, predict, analyze (cached stages skip); several "
                         "configs run in one process and one Prefect flow, one MLflow parent run each"),
    "ingest": ("flows.ingest", "ingest a config's source into its versioned dataset store"),
    "reprocess": ("flows.reprocess", "append a new annotation batch and recompute only what it changes"),
    "train": ("flows.train", "train the annotator-style models on an ingested dataset"),
    "predict": ("flows.predict", "write every annotator's predictions to a prediction store"),
    "analyze": ("flows.analyze", "group annotators by style: distances, trees, projections"),
    "probe": ("flows.probe", "how much behaviour and annotator identity encoders hold: SimCLR pretraining, "
                             "linear probes and mutual-information bounds against raw, random and supervised"),
    "serve": ("flows.serve", "serve the pipeline on a cron schedule and reprocess each new batch in a watched "
                             "folder (needs a Prefect server: the root's, see `server`, or PREFECT_API_URL)"),
    "deploy": ("flows.serve", "create the pipeline and reprocess deployments on a process work pool, for "
                              "`prefect worker start --pool POOL` (needs a Prefect server)"),
    "watch": ("flows.serve", "watch a folder and start one reprocess run per new batch on the deployments "
                             "that `deploy` made; workers run them (needs a Prefect server)"),
    "runs": ("flows.runs", "list recent pipeline runs from MLflow, or --diff two of them"),
    "ui": ("flows.ui", "start the MLflow UI on 127.0.0.1 for the root's tracking store (Ctrl-C stops it)"),
    "verify": ("flows.verify", "check every chunk and metadata file of the dataset and prediction stores; "
                               "list what is damaged (exit 2 when anything is)"),
    "server": ("flows.server", "start, stop or show the root's shared Prefect server (API and UI on 127.0.0.1), "
                               "which every command uses instead of booting a temporary one, and its command host, "
                               "in which flow commands run with their libraries already imported"),
}
NO_CONFIG = {"runs", "ui", "server"}  # these read the root's tracking store or manage its server, not a config
FLOW_COMMANDS = {"run", "ingest", "reprocess", "train", "predict", "analyze", "probe"}  # run Prefect flows
NEEDS_SERVER = {"serve", "deploy", "watch"}  # use the root's server when it answers; never start one
HOSTED = FLOW_COMMANDS | {"verify", "runs"}  # run in the root's command host when it is up (flows.host)

def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


SCHEDULER = (("--scheduler",), {"metavar": "ADDRESS", "default": None,
                                "help": "Dask scheduler address (default: the config's, else local threads)"})
CRON = (("--cron",), {"metavar": "EXPR", "help": "run the pipeline on this cron schedule, e.g. '0 3 * * *'"})
WATCH_HELP = "reprocess every new batch file or folder that appears in DIR, once"
INTERVAL = (("--interval",), {"type": float, "metavar": "SECONDS",
                              "help": "seconds between scans of --watch (default 10)"})
EXTRA_ARGS: dict[str, list[tuple[tuple[str, ...], dict]]] = {
    "predict": [(("--export-npz",), {"action": "store_true",
                                     "help": "also write the MABe notebook's per-sequence npz layout"}),
                SCHEDULER],
    "analyze": [SCHEDULER],
    "run": [(("--force",), {"action": "append", "metavar": "STAGE", "choices": ["ingest", "train", "predict", "analyze"],
                            "help": "rerun STAGE and every stage after it (repeatable)"}),
            (("--jobs", "-j"), {"type": positive_int, "default": 1, "metavar": "N",
                                "help": "with several configs, run N datasets side by side in this process "
                                        "(default 1: one after another); they share the cores"}),
            (("--probe",), {"action": "append", "metavar": "NAME",
                            "help": "after dataset NAME's pipeline, probe its encoders in the same flow, as "
                                    "`annostyle probe` does (repeatable)"}),
            SCHEDULER],
    "reprocess": [(("--batch",), {"required": True, "metavar": "PATH",
                                  "help": "the new batch: a file or folder in the config's source format, "
                                          "or a YAML file with a `source:` section"}),
                  SCHEDULER],
    "serve": [CRON, (("--watch",), {"type": Path, "metavar": "DIR", "help": WATCH_HELP}), INTERVAL],
    "deploy": [(("--pool",), {"required": True, "metavar": "POOL",
                              "help": "a process work pool (`prefect work-pool create POOL --type process`)"}),
               CRON],
    "watch": [(("--watch",), {"type": Path, "metavar": "DIR", "required": True, "help": WATCH_HELP}), INTERVAL],
    "runs": [(("--diff",), {"nargs": 2, "metavar": ("RUN_A", "RUN_B"),
                            "help": "what changed from parent run RUN_A to RUN_B"}),
             (("--limit",), {"type": int, "default": 20, "help": "how many recent runs to list (default 20)"}),
             (("--dataset",), {"metavar": "NAME", "help": "only this dataset's runs"})],
    "ui": [(("--port",), {"type": int, "default": 5000, "help": "port on 127.0.0.1 (default 5000)"})],
    "server": [(("action",), {"nargs": "?", "choices": ["start", "stop", "status"], "default": "status",
                              "help": "start (or reuse) the server, stop it, or show it (default: status)"}),
               (("--idle-minutes",), {"type": float, "metavar": "N", "default": None,
                                      "help": "with start: stop after N minutes with no command using it "
                                              "(default 0: stay until `annostyle server stop`)"})],
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="annostyle", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if name == "run":
            cmd.add_argument("configs", nargs="+", metavar="CONFIG",
                             help="pipeline configs (YAML), e.g. configs/demo.yaml; several run in one flow "
                                  "(see --jobs)")
        elif name not in NO_CONFIG:
            cmd.add_argument("config", help="pipeline config (YAML), e.g. configs/demo.yaml")
        cmd.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                         help=f"folder for every store and the MLflow store (default: {DEFAULT_ROOT})")
        cmd.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
        for flags, options in EXTRA_ARGS.get(name, []):
            cmd.add_argument(*flags, **options)
        cmd.set_defaults(module=module)
    return parser


def _prefect_api(args: argparse.Namespace) -> contextlib.AbstractContextManager[object]:
    """Flow commands use the root's shared Prefect server (flows.server), started if need be;
    `serve`, `deploy` and `watch` use it only when it already answers.

    A command's flow runs send no heartbeats unless PREFECT_FLOWS_HEARTBEAT_FREQUENCY asks for
    them: Prefect 3.8's heartbeat thread sleeps in 1 s steps and every flow run waits for it at
    its end (0-1 s; 0.9 s measured on a trivial flow). The command itself watches its run;
    deployments keep their heartbeats (`flows.serve` sets the variable)."""
    if args.command not in FLOW_COMMANDS | NEEDS_SERVER:
        return contextlib.nullcontext()
    from flows.server import connected
    from storage.layout import RootLayout

    heartbeats = args.command not in FLOW_COMMANDS or heartbeat_setting() is not None
    return connected(RootLayout(args.root), start=args.command in FLOW_COMMANDS, heartbeats=heartbeats)


def check_configs(args: argparse.Namespace) -> None:
    """Validate the command's configs: a bad one fails here, before any server or flow run starts."""
    from configs.schema import load_config
    from errors import InputError

    names = [load_config(config).name
             for config in getattr(args, "configs", None) or ([args.config] if args.command not in NO_CONFIG else [])]
    for name in getattr(args, "probe", None) or []:
        if name not in names:
            raise InputError("--probe", "dataset", name, f"no config given names this dataset (they name {names})")


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command in this process: print its result, return its exit code (2: bad input)."""
    from errors import InputError
    from storage.results import StageResult

    try:
        check_configs(args)
        module = importlib.import_module(args.module)
        with _prefect_api(args):
            result: StageResult = module.cli_run(args)
    except InputError as err:
        print(f"annostyle: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        module.cli_print(result)
    return 0


def parse_argv(argv: list[str] | None) -> argparse.Namespace:
    """The command's arguments (None: this process's), with the root's environment defaults and
    the logging set up."""
    args = build_parser().parse_args(argv)
    apply_defaults(args.root)
    setup_logging()
    return args


def run_argv(argv: list[str]) -> int:
    """The whole command for `argv` (without the program name) in this process."""
    return run_command(parse_argv(argv))
