"""First runs started together on a fresh root: real `annostyle run` processes, racing for real.

MLflow creates a SQLite tracking store's schema on first open, unguarded; `storage.tracking`
opens it under the root's lock (`RootLayout.mlflow_lock`), so every first run succeeds and the
root stays usable for the runs after them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONFIGS, PROJECT

from storage.layout import RootLayout
from storage.tracking.runs import list_runs

BLUEBIRDS = CONFIGS / "bluebirds.yaml"  # label-only: a whole pipeline run in seconds
N_FIRST = 4
SCHEMA_RACE = ("duplicate column", "already exists", "alembic")


def fresh_env() -> dict[str, str]:
    """The environment of a user's shell: none of the test session's Prefect, MLflow or scratch
    settings, so each run puts its state under its root as `annostyle run` does."""
    drop = ("MPLCONFIGDIR", "DASK_TEMPORARY_DIRECTORY", "MLFLOW_TRACKING_URI")
    return {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k not in drop}


def start_run(root: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(BLUEBIRDS), "--root", str(root),
                             "--json"], cwd=PROJECT, env=fresh_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"a run on the shared root hung for {timeout:.0f} s:\n{err[-3000:]}")
    return process.returncode, out, err


def parent_run_id(out: str) -> str:
    return str(json.loads(out.strip().splitlines()[-1])["mlflow_run_id"])


@pytest.mark.slow
def test_concurrent_first_runs_on_a_fresh_root_all_succeed(tmp_path):
    root = tmp_path / "root"  # does not exist yet: the runs create it, its stores and mlflow.db
    results = [finish(p) for p in [start_run(root) for _ in range(N_FIRST)]]
    ok = [code == 0 for code, _, _ in results]
    print(f"concurrent first runs: {sum(ok)} ok / {N_FIRST} tried")
    for code, _, err in results:
        assert code == 0, f"a concurrent first run failed (exit {code}):\n{err[-3000:]}"
        tracking_errors = [line for line in err.splitlines() if "mlflow" in line.lower()
                           and any(word in line for word in SCHEMA_RACE)]
        assert not tracking_errors, tracking_errors

    code, out, err = finish(start_run(root))  # the root stays usable
    assert code == 0, f"the run after the concurrent first runs failed (exit {code}):\n{err[-3000:]}"

    ids = {parent_run_id(out) for _, out, _ in results} | {parent_run_id(out)}
    assert len(ids) == N_FIRST + 1
    layout = RootLayout(root)
    assert layout.mlflow_lock.exists()
    recorded = {r.run_id for r in list_runs(layout.local_tracking_uri, limit=50)}
    assert ids <= recorded, f"parent runs missing from the tracking store: {ids - recorded}"


def test_a_damaged_tracking_store_is_an_error_naming_it(tmp_path):
    """A tracking store that is not one (here: random bytes) stops `annostyle ui` with exit 2 and
    its file named, and stays as it was."""
    layout = RootLayout(tmp_path / "root")
    layout.root.mkdir()
    junk = os.urandom(4096)
    layout.mlflow_db.write_bytes(junk)
    done = subprocess.run([sys.executable, "-m", "flows.cli", "ui", "--root", str(layout.root), "--port", "1"],
                          cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert str(layout.mlflow_db) in done.stderr
    assert "Traceback" not in done.stderr
    assert layout.mlflow_db.read_bytes() == junk
