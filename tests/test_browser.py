"""The MLflow UI in a real browser: a pipeline run recorded on a local `mlflow server`, then headless
Chromium opens the experiment, the parent run, a nested stage run and a figure artifact."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CONFIGS, PROJECT

from flows.ui import server_command, server_env, stop, wait_ready
from storage.layout import RootLayout

# a system browser and its driver (not pip-installable): found on PATH under their usual names
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """`mlflow server` on 127.0.0.1 (free port, SQLite in a temp folder, one worker, no job processes)."""
    base = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (base / "server.log").open("w")
    process = subprocess.Popen(server_command(RootLayout(base), port), env=server_env(), cwd=base,
                               start_new_session=True, stdout=log, stderr=log)
    try:
        wait_ready(url, process)
        yield url, base
    finally:
        stop(process)
        log.close()


@pytest.fixture(scope="module")
def pipeline_run(server) -> dict:
    """`annostyle run configs/bluebirds.yaml` as a subprocess whose tracking URI is the server."""
    url, base = server
    env = {**os.environ, "MLFLOW_TRACKING_URI": url, "PREFECT_HOME": str(base / "prefect")}
    env.pop("PREFECT_API_URL", None)  # its own ephemeral Prefect API, not the test harness's
    done = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(CONFIGS / "bluebirds.yaml"),
                           "--root", str(base / "root"), "--json"], cwd=PROJECT, env=env, capture_output=True,
                          text=True, timeout=540)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if CHROMIUM is None or CHROMEDRIVER is None:
        missing = "Chromium" if CHROMIUM is None else "ChromeDriver"
        if os.environ.get("CI"):  # .ci/run installs them: a missing browser there is a failure
            pytest.fail(f"{missing} is not on PATH in CI")
        pytest.skip(f"BROWSER TEST SKIPPED: {missing} is not on PATH; this test drives a real browser, which pip "
                    "cannot install: `apt-get install -y chromium chromium-driver` (CI installs them and fails "
                    "without them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def show(driver, url: str, *texts: str, shot: Path, timeout: float = 60.0) -> str:
    """Open `url`, wait until the page's text holds every one of `texts`, save a screenshot."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)

    def ready(d) -> bool:
        body = d.find_element(By.TAG_NAME, "body").text
        return all(t in body for t in texts)

    try:
        WebDriverWait(driver, timeout, poll_frequency=0.5).until(ready)
    except TimeoutException:
        driver.save_screenshot(str(shot.with_name(shot.stem + "-failed.png")))
        body = driver.find_element(By.TAG_NAME, "body").text
        pytest.fail(f"{url}: {[t for t in texts if t not in body]} not on the page; it shows: {body[:1500]!r}")
    driver.save_screenshot(str(shot))
    return driver.find_element(By.TAG_NAME, "body").text


def test_mlflow_ui_shows_experiment_runs_and_a_figure(server, pipeline_run, browser, tmp_path):
    import mlflow
    from selenium.webdriver.common.by import By

    url, _ = server
    client = mlflow.MlflowClient(tracking_uri=url)
    parent = client.get_run(pipeline_run["mlflow_run_id"])
    experiment = parent.info.experiment_id
    analyze_id = pipeline_run["stages"]["analyze"]["run_id"]
    analyze = client.get_run(analyze_id)
    assert analyze.data.tags["mlflow.parentRunId"] == parent.info.run_id
    figures = [f.path for f in client.list_artifacts(analyze_id, "figures")]
    assert "figures/dendrograms.png" in figures

    show(browser, f"{url}/#/experiments/{experiment}/runs", "annostyle/bluebirds", "pipeline:bluebirds",
         shot=tmp_path / "1-experiment.png")
    show(browser, f"{url}/#/experiments/{experiment}/runs/{parent.info.run_id}", "pipeline:bluebirds",
         parent.info.run_id, shot=tmp_path / "2-parent-run.png")
    show(browser, f"{url}/#/experiments/{experiment}/runs/{analyze_id}", "analyze:bluebirds", "n_annotators",
         shot=tmp_path / "3-analyze-run.png")
    show(browser, f"{url}/#/experiments/{experiment}/runs/{analyze_id}/artifacts/figures/dendrograms.png",
         "dendrograms.png", shot=tmp_path / "4-figure.png")
    from selenium.webdriver.support.ui import WebDriverWait

    def figure_shown(d) -> bool:  # the PNG itself (not the logo, an inline data: URL) has loaded
        return any(not (img.get_attribute("src") or "").startswith("data:") and d.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 300", img)
            for img in d.find_elements(By.TAG_NAME, "img"))

    WebDriverWait(browser, 60, poll_frequency=0.5).until(figure_shown)
    browser.save_screenshot(str(tmp_path / "4-figure.png"))
    print(f"screenshots in {tmp_path}")
