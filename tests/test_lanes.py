"""Several datasets side by side in one process (`annostyle run --jobs N`): the lanes, the thread
pools they share, the log lines that name their dataset, and the arguments that refuse bad values;
and the Prefect database template a new root's server starts from."""

from __future__ import annotations

import contextvars
import io
import logging
import os
import sqlite3
import threading
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS

import flows.server as server
from flows.cli import main
from flows.run import side_by_side
from flows.settings import DATASET, LOG_FORMAT, DatasetTag
from storage.layout import RootLayout
from tasks.workers import THREAD_ENVS, shared_threads, torch_threads


def test_calls_run_side_by_side_and_their_results_keep_the_order_given():
    meet = threading.Barrier(2, timeout=10)  # passes only when two calls wait on it at once
    order: list[int] = []

    def call(i: int) -> int:
        order.append(i)
        if i < 2:
            meet.wait()
        return i * 10

    assert side_by_side([lambda i=i: call(i) for i in range(4)], jobs=2) == [0, 10, 20, 30]
    assert sorted(order) == [0, 1, 2, 3]


def test_one_lane_runs_the_calls_one_after_another():
    meet = threading.Barrier(2, timeout=0.5)
    with pytest.raises(threading.BrokenBarrierError):
        side_by_side([meet.wait, meet.wait], jobs=1)


def test_the_first_failure_stops_the_calls_not_started_and_is_raised():
    ran: list[str] = []

    def ok() -> str:
        ran.append("ok")
        return "ok"

    def bad() -> str:
        ran.append("bad")
        raise ValueError("dataset 2 is broken")

    def never() -> str:
        ran.append("never")
        return "never"

    with pytest.raises(ValueError, match="dataset 2 is broken"):
        side_by_side([ok, bad, never], jobs=1)
    assert ran == ["ok", "bad"]


def test_a_lane_carries_the_callers_context():
    var: contextvars.ContextVar[str] = contextvars.ContextVar("probe", default="unset")
    var.set("the flow run's")
    assert side_by_side([var.get, var.get], jobs=2) == ["the flow run's"] * 2


def test_a_lanes_log_lines_name_its_dataset():
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(DatasetTag())
    log = logging.getLogger("tasks.lane_test")
    log.addHandler(handler)
    log.setLevel(logging.INFO)

    def work(name: str) -> None:
        DATASET.set(name)
        log.info("working")

    try:
        side_by_side([lambda: work("rte"), lambda: work("wsd")], jobs=2)
        log.info("outside")
    finally:
        log.removeHandler(handler)
    err = lines.getvalue()
    assert "tasks.lane_test [rte]: working" in err and "tasks.lane_test [wsd]: working" in err
    assert "tasks.lane_test: outside" in err


def test_shared_threads_hold_torch_and_the_environment_and_give_them_back():
    before, env = torch.get_num_threads(), {n: os.environ.get(n) for n in THREAD_ENVS}
    with shared_threads(1):
        assert torch.get_num_threads() == 1
        torch_threads(4)  # a config's `train.threads` does not resize the shared pools
        assert torch.get_num_threads() == 1
        assert all(os.environ[n] == "1" for n in THREAD_ENVS)
    assert torch.get_num_threads() == before
    assert {n: os.environ.get(n) for n in THREAD_ENVS} == env
    torch_threads(1)
    assert torch.get_num_threads() == 1
    torch.set_num_threads(before)


@pytest.mark.parametrize("argv, says", [
    (["--jobs", "0"], "--jobs"),
    (["--jobs", "two"], "--jobs"),
    (["--probe", "nope"], "--probe"),
])
def test_bad_jobs_or_probe_names_the_argument_and_starts_nothing(tmp_path, capsys, argv, says):
    root = tmp_path / "root"
    with pytest.raises(SystemExit) as exit_:
        raise SystemExit(main(["run", str(CONFIGS / "bluebirds.yaml"), str(CONFIGS / "wsd.yaml"),
                               "--root", str(root), *argv]))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert not RootLayout(root).server_state.exists() and not (root / "mlflow.db").exists()


# ----------------------------------------------------------------------------- the database template
def migrated(path: Path) -> Path:
    """A small SQLite file with Prefect's migration record, as a template holds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE alembic_version (version_num TEXT)")
        db.execute("INSERT INTO alembic_version VALUES ('head')")
    return path


def test_a_new_roots_database_starts_from_a_sound_template(tmp_path, monkeypatch):
    template = tmp_path / "template"
    migrated(template / "prefect.db")
    (template / "memo_store.toml").write_text("memo")
    monkeypatch.setattr(server, "_template", lambda: template)
    for name in server.DATABASE_ENVS:
        monkeypatch.delenv(name, raising=False)
    layout = RootLayout(tmp_path / "root")
    assert server.seed_database(layout)
    assert layout.prefect_database.read_bytes() == (template / "prefect.db").read_bytes()
    assert (layout.prefect_home / "memo_store.toml").read_text() == "memo"
    assert not list(layout.prefect_home.glob(".*partial"))
    # a root that has its database keeps it
    layout.prefect_database.write_bytes(b"the root's own")
    assert not server.seed_database(layout)
    assert layout.prefect_database.read_bytes() == b"the root's own"


def test_a_damaged_template_or_another_database_is_not_used(tmp_path, monkeypatch, caplog):
    template = tmp_path / "template"
    db = migrated(template / "prefect.db")
    db.write_bytes(db.read_bytes()[:200])  # truncated
    monkeypatch.setattr(server, "_template", lambda: template)
    layout = RootLayout(tmp_path / "root")
    with caplog.at_level(logging.WARNING, logger="flows.server"):
        assert not server.seed_database(layout)
    assert str(template / "prefect.db") in caplog.text and not layout.prefect_database.exists()
    migrated(db.with_name("sound.db")).replace(db)
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", "postgresql+asyncpg://elsewhere/prefect")
    assert not server.seed_database(layout) and not layout.prefect_database.exists()
