"""What a user waits for beyond the work: `annostyle run`'s wall time against its stages' own times.

Each case runs the installed command line as a user would (a fresh root, none of this shell's
Prefect settings), with `--json`, and then asks the root's Prefect server for the flow run's task
runs: each stage (ingest, train, predict, analyze) is one Prefect task, and its run time there is
the stage's own time (its work, including the libraries it imports for itself). The rest of the
wall time is overhead: interpreter start and imports, connecting to the Prefect API, opening the
MLflow store and recording the runs, exit. Overhead share = (wall - stages) / wall.
Targets (issue 13): bluebirds <= 5 s wall and overhead share <= 0.3; the demo <= 30 s wall and
overhead share <= 0.15.

Cases, each on its own fresh root:
- `bluebirds`: the root's shared server already started (`annostyle server start`), as for every
  command after a root's first;
- `bluebirds-cold`: nothing started: the first command of a root also boots the server;
- `demo`: the demo pipeline (every stage) with the server started.

    .venv/bin/python benchmarks/startup.py                     # all three
    .venv/bin/python benchmarks/startup.py --cases bluebirds   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
CONFIGS = PROJECT / "configs"
CASES = {"bluebirds": ("bluebirds.yaml", True), "bluebirds-cold": ("bluebirds.yaml", False),
         "demo": ("demo.yaml", True)}
STAGES = ("ingest", "train", "predict", "analyze")


def user_env() -> dict[str, str]:
    drop = ("MPLCONFIGDIR", "DASK_TEMPORARY_DIRECTORY", "MLFLOW_TRACKING_URI")
    return {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ANNOSTYLE_")) and k not in drop}


def annostyle(*argv: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "annostyle"
    return subprocess.run([str(exe), *argv], cwd=PROJECT, env=user_env(), capture_output=True, text=True,
                          timeout=1800)


def last_json(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    if done.returncode != 0:
        sys.exit(f"annostyle failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def api(url: str, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def stage_times(api_url: str) -> tuple[float, dict[str, float]]:
    """The latest flow run's own run time, and each stage's (its Prefect task run's)."""
    [flow_run] = api(api_url, "/flow_runs/filter", {"sort": "START_TIME_DESC", "limit": 1})
    tasks = api(api_url, "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run["id"]]}}, "limit": 200})
    times: dict[str, float] = {}
    for task in tasks:
        stage = task["name"].rsplit("-", 1)[0]  # a task run is named `<task>-<suffix>`
        times[stage] = times.get(stage, 0.0) + float(task["total_run_time"] or 0.0)
    return float(flow_run["total_run_time"] or 0.0), times


def run_case(name: str) -> dict[str, Any]:
    config, warm = CASES[name]
    root = Path(tempfile.mkdtemp(prefix=f"annostyle-bench-{name}-"))
    try:
        boot = None
        if warm:
            t0 = time.perf_counter()
            last_json(annostyle("server", "start", "--root", str(root), "--json"))
            boot = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = last_json(annostyle("run", str(CONFIGS / config), "--root", str(root), "--json"))
        wall = time.perf_counter() - t0
        state = last_json(annostyle("server", "status", "--root", str(root), "--json"))
        flow_time, stages = stage_times(state["api_url"])
        statuses = {s: v["status"] for s, v in result["stages"].items()}
        return {"case": name, "config": config, "server_boot_s": boot, "wall_s": wall, "flow_s": flow_time,
                "stages_s": stages, "stage_sum_s": sum(stages.values()), "statuses": statuses,
                "overhead_share": (wall - sum(stages.values())) / wall}
    finally:
        annostyle("server", "stop", "--root", str(root))
        shutil.rmtree(root, ignore_errors=True)


def uptime() -> str:
    done = subprocess.run(["uptime"], capture_output=True, text=True)
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = parser.parse_args()
    print(f"uptime before: {uptime()}")
    rows = [run_case(name) for name in args.cases]
    print(f"uptime after:  {uptime()}")
    print(f"{'case':<15} {'wall s':>7} {'flow s':>7} {'stages s':>8} {'overhead':>8}  server boot before")
    for r in rows:
        boot = f"{r['server_boot_s']:.1f} s" if r["server_boot_s"] is not None else "none (the run booted it)"
        print(f"{r['case']:<15} {r['wall_s']:7.1f} {r['flow_s']:7.1f} {r['stage_sum_s']:8.1f} "
              f"{r['overhead_share']:8.2f}  {boot}")
    for r in rows:
        per_stage = ", ".join(f"{s} {r['stages_s'].get(s, 0.0):.1f} s ({r['statuses'].get(s, '-')})" for s in STAGES)
        print(f"  {r['case']}: {per_stage}")
    targets = {"bluebirds": (5.0, 0.3), "demo": (30.0, 0.15)}
    for r in rows:
        if r["case"] in targets:
            wall, share = targets[r["case"]]
            ok = r["wall_s"] <= wall and r["overhead_share"] <= share
            print(f"target {r['case']}: wall <= {wall:g} s and overhead share <= {share:g}: "
                  f"{'met' if ok else 'NOT met'} ({r['wall_s']:.1f} s, {r['overhead_share']:.2f})")
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
