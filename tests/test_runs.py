"""Auditing runs: `annostyle runs` (listing and --diff) on a real MLflow store made by real pipeline runs,
`annostyle ui` started and stopped with Ctrl-C or SIGTERM (its whole server group gone), and figures that stay readable with 50 annotators."""

from __future__ import annotations

import contextlib
import io
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CONFIGS, PROJECT

from flows.cli import main
from storage.layout import RootLayout
from storage.tracking.runs import diff_records, list_runs

BLUEBIRDS = CONFIGS / "bluebirds.yaml"


def cli_json(*argv: str) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(list(argv)) == 0
    return json.loads(out.getvalue().strip().splitlines()[-1])


@pytest.fixture(scope="module")
def two_runs(prefect_harness, tmp_path_factory) -> tuple[Path, dict, dict]:
    """Two real label-only pipeline runs in one root: a first one, then one with analyze forced."""
    root = tmp_path_factory.mktemp("runs") / "root"
    first = cli_json("run", str(BLUEBIRDS), "--root", str(root), "--json")
    second = cli_json("run", str(BLUEBIRDS), "--root", str(root), "--json", "--force", "analyze")
    return root, first, second


@pytest.mark.slow
def test_runs_json_lists_the_pipeline_run_with_its_stages(two_runs):
    root, first, second = two_runs
    runs = cli_json("runs", "--root", str(root), "--json")["runs"]
    assert [r["run_id"] for r in runs] == [second["mlflow_run_id"], first["mlflow_run_id"]]  # newest first
    run = runs[1]
    assert run["kind"] == "pipeline" and run["status"] == "FINISHED" and run["trigger"] == "manual"
    assert run["dataset"] == "bluebirds" and run["version"] == first["version"]
    assert {s: v["status"] for s, v in run["stages"].items()} == \
        {"ingest": "ran", "train": "ran", "predict": "skipped", "analyze": "ran"}
    assert run["model_run_id"] == first["stages"]["train"]["run_id"]
    assert run["analysis_run_id"] == first["stages"]["analyze"]["run_id"]
    assert run["method"] == "labels" and len(run["annotators"]) == 39
    assert run["clusters"] == {k: {a: int(c) for a, c in v.items()} for k, v in first["clusters"].items()}
    assert runs[0]["stages"]["train"]["status"] == "reused" and runs[0]["stages"]["analyze"]["status"] == "ran"
    assert runs[0]["model_run_id"] == runs[0]["stages"]["train"]["run_id"]


@pytest.mark.slow
def test_runs_diff_says_what_changed(two_runs, capsys):
    root, first, second = two_runs
    diff = cli_json("runs", "--root", str(root), "--json", "--diff", first["mlflow_run_id"],
                    second["mlflow_run_id"])["diff"]
    assert diff["version"] is None and diff["dataset"] is None and diff["params"] == {}
    assert diff["annotators"] == {"added": [], "removed": []}
    assert not diff["clusters_changed"] and set(diff["clusters"]) == {"2", "3", "4"}
    assert diff["stages"]["train"] == {"a": "ran", "b": "reused"}
    capsys.readouterr()
    assert main(["runs", "--root", str(root), "--diff", first["mlflow_run_id"], second["mlflow_run_id"]]) == 0
    text = capsys.readouterr().out
    assert "version       same" in text and "clusters k=2 same" in text and "train ran -> reused" in text
    assert main(["runs", "--root", str(root), "--diff", first["mlflow_run_id"], "0" * 32]) == 2


@pytest.mark.slow
def test_diff_of_changed_records_names_data_annotators_clusters_and_metrics(two_runs):
    root, _, _ = two_runs
    a = list_runs(RootLayout(root).local_tracking_uri)[1]
    b = a.model_copy(deep=True)
    b.run_id, b.version, b.annotators = "b", "v2", [*a.annotators[1:], "newcomer"]
    moved = a.annotators[2]
    b.clusters["2"][moved] = 1 - b.clusters["2"][moved]
    b.metrics["n_annotators"] = 40.0
    b.params["analyze.min_overlap"] = "99"
    d = diff_records(a, b).model_dump()
    assert d["version"] == {"a": a.version, "b": "v2"}
    assert d["annotators"] == {"added": ["newcomer"], "removed": [a.annotators[0]]}
    assert d["clusters_changed"] and moved in d["clusters"]["2"]["moved"] and d["clusters"]["3"]["same"]
    assert d["metrics"]["n_annotators"]["delta"] == 1.0
    assert d["params"]["analyze.min_overlap"]["b"] == "99"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ui_serves_the_store_and_stops_on_ctrl_c(two_runs):
    root, _, _ = two_runs
    port = _free_port()
    ui = subprocess.Popen([sys.executable, "-m", "flows.cli", "ui", "--root", str(root), "--port", str(port)],
                          cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = ui.stdout.readline()
        assert f"http://127.0.0.1:{port}" in line
        import urllib.request

        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search?"
                                      "max_results=10", timeout=10).read().decode()
        assert "annostyle/bluebirds" in body
        ui.send_signal(signal.SIGINT)
        assert ui.wait(30) == 0
        assert "stopped" in ui.stdout.read()
    finally:
        if ui.poll() is None:
            ui.kill()
    time.sleep(0.5)
    with socket.socket() as s:  # the server (a separate process group) is gone too
        assert s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.slow
def test_ui_stops_its_whole_server_group_on_sigterm(tmp_path):
    import psutil

    from storage.tracking import ensure_store

    layout = RootLayout(tmp_path / "root")
    ensure_store(layout, layout.local_tracking_uri)  # a real, empty tracking store
    port = _free_port()
    ui = subprocess.Popen([sys.executable, "-m", "flows.cli", "ui", "--root", str(layout.root), "--port", str(port)],
                          cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert f"http://127.0.0.1:{port}" in ui.stdout.readline()
        children = psutil.Process(ui.pid).children(recursive=True)  # the server and its workers
        assert children
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) == 0
        ui.send_signal(signal.SIGTERM)  # to the ui process only, as `kill PID` or a supervisor does
        assert ui.wait(30) == 0
        assert "stopped" in ui.stdout.read()
    finally:
        if ui.poll() is None:
            ui.kill()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running after SIGTERM: {[(p.pid, p.name()) for p in alive]}"
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_figures_stay_readable_with_50_annotators(tmp_path):
    from scipy.cluster.hierarchy import linkage

    from tasks import figures
    from tasks.clustering import condensed

    rng = np.random.default_rng(0)
    names = [f"annotator_{i:02d}" for i in range(50)]
    points = rng.normal(size=(50, 4))
    matrix = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    z = linkage(condensed(matrix), "average")
    made = {
        "heatmap": figures.distance_heatmap(matrix, names, "distances"),
        "dendrograms": figures.dendrograms({"average": z, "complete": linkage(condensed(matrix), "complete")},
                                           names, {n: f"g{i % 3}" for i, n in enumerate(names)}),
        "clustermap": figures.clustermap(matrix, names, "distances", "average", square_distances=True),
    }
    for kind, fig in made.items():
        fig.canvas.draw()
        titled = [ax for ax in fig.axes if ax.get_title()] or ([fig] if fig._suptitle else [])
        assert titled, f"{kind}: no title"
        for ax in fig.axes:
            ticks = [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
            if set(names) <= set(ticks):
                assert ax.get_xlabel() and ax.get_ylabel(), f"{kind}: axis labels missing"
                sizes = {t.get_fontsize() for t in ax.get_xticklabels() if t.get_text() in names}
                assert min(sizes) >= 4.0, f"{kind}: tick labels too small"
                boxes = [t.get_window_extent() for t in ax.get_xticklabels() if t.get_text() in names]
                overlaps = sum(a.overlaps(b) for a, b in zip(boxes, boxes[1:], strict=False))
                assert overlaps == 0, f"{kind}: {overlaps} annotator names overlap"
                break
        else:
            pytest.fail(f"{kind}: no axis shows all 50 annotator names")
        figures.save(fig, tmp_path / f"{kind}.png")
