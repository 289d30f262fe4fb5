"""The style explanations inside the analyze stage: the demo's styles come out in words, in the
summary, `styles.json`, the table, the figures, the CLI, the Prefect artifact and MLflow."""

from __future__ import annotations

import csv
import json
import re
import textwrap
from pathlib import Path

import krippendorff
import numpy as np
import pytest
from conftest import CONFIGS
from test_analyze_flow import fill_demo_predictions, mlflow_client

from configs.schema import load_config
from errors import InputError
from flows.analyze import analyze_flow
from flows.cli import main
from storage.dataset_store import DatasetStore
from storage.layout import RootLayout
from tasks.analyze import analyze
from tasks.ingest import ingest
from tasks.styles.consensus import vote_counts

LAG = r"(\d+(?:\.\d+)?) frames?"


def demo_config(folder: Path, extra: str = "") -> Path:
    """The demo at its default size (48 sequences of 1,000 frames, 8 annotators in 3 styles)."""
    path = folder / "demo.yaml"
    styles = "{background: other" + extra + "}"
    path.write_text(textwrap.dedent("""\
        name: demo
        source: {kind: demo, size: demo, seed: 0}
        analyze:
          projections: false
          styles: STYLES
        """).replace("STYLES", styles))
    return path


@pytest.fixture(scope="module")
def demo_analysis(tmp_path_factory):
    folder = tmp_path_factory.mktemp("styles")
    root = folder / "root"
    config = load_config(demo_config(folder))
    ingest(config, RootLayout(root))
    return analyze(config, RootLayout(root)), DatasetStore.open(RootLayout(root).dataset_uri("demo"))


def test_demo_cards_say_each_style_in_words(demo_analysis):
    result, dataset = demo_analysis
    styles = result.styles
    assert styles is not None and styles.reference == "others" and styles.k == 3
    truth = dataset.meta["truth"]
    groups, drawn = truth["style_groups"], truth["styles"]
    # the cluster cut the cards describe is the true grouping
    members: dict[int, set[str]] = {}
    for name, cluster in styles.clusters.items():
        members.setdefault(cluster, set()).add(name)
    assert sorted(map(sorted, members.values())) == sorted(
        sorted(a for a in groups if groups[a] == g) for g in set(groups.values()))
    cards = {c.name: " ".join(c.lines) for c in styles.cards if c.kind == "annotator"}
    for name, group in groups.items():
        text = cards[name]
        if group == "lenient":
            onset = re.search(f"starts bouts {LAG} before the others", text)
            assert onset and "later" in text.split("starts bouts", 1)[1], text
            assert drawn[name]["onset_shift"] > 0  # the generator extended its bouts
        elif group == "strict":
            assert re.search(f"starts bouts {LAG} after the others", text) and "earlier" in text, text
        else:
            assert "labels attack as investigation" in text, text
            # its boundaries are within a frame of the truth: any lag it is said to have is small
            claimed = [float(x) for x in re.findall(f"(?:starts|ends) (?:bouts|them) {LAG}", text)]
            assert all(x <= 2 for x in claimed), text
    clusters = [c for c in styles.cards if c.kind == "cluster"]
    assert len(clusters) == 3
    confuser_cluster = next(c for c in clusters if {groups[m] for m in c.members} == {"confuser"})
    assert any("labels attack as investigation" in line for line in confuser_cluster.lines)


def test_demo_styles_are_written_as_json_table_and_figures(demo_analysis):
    result, dataset = demo_analysis
    out = Path(result.outputs)
    stored = json.loads((out / "styles.json").read_text())
    assert stored == result.styles.model_dump(mode="json")
    with (out / "styles_annotators.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["annotator"] for r in rows] == dataset.annotators
    assert all(float(r["kappa"]) > 0.3 for r in rows)
    for name in ("style_confusions", "style_quality", "style_lags", "style_drift"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 10_000, name
    assert set(result.styles.seconds) >= {"agreement", "quality", "bouts", "drift", "cards"}
    assert sum(result.styles.seconds.values()) < 20  # seconds, on a loaded 2-core machine: not seconds per frame


def test_label_only_crowd_gets_agreement_and_quality_without_bouts(root):
    config = load_config(CONFIGS / "rte.yaml")
    ingest(config, RootLayout(root))
    result = analyze(config, RootLayout(root))
    styles = result.styles
    assert styles.bouts is None and styles.quality is not None
    assert len(styles.agreement.annotators) == len(result.annotators)
    dataset = DatasetStore.open(RootLayout(root).dataset_uri("rte"))
    labels = dataset.read_labels()
    data = np.where(labels >= 0, labels, np.nan).T.astype(float)
    expected = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")
    assert styles.agreement.krippendorff_alpha == pytest.approx(expected, abs=1e-9)
    assert np.array_equal(vote_counts(labels, 2).sum(axis=1), (labels >= 0).sum(axis=1))


def test_an_unknown_background_class_is_an_error_naming_it(root, tmp_path):
    path = demo_config(tmp_path)
    ingest(load_config(path), RootLayout(root))
    path.write_text(path.read_text().replace("background: other", "background: grooming"))
    bad = load_config(path)
    with pytest.raises(InputError, match="grooming") as err:
        analyze(bad, RootLayout(root))
    assert "analyze.styles.background" in str(err.value) and "attack" in str(err.value)


def test_the_flow_records_styles_in_mlflow_the_artifact_and_the_cli(prefect_harness, root, tmp_path, capsys):
    """The model's consensus as the reference, on a planted prediction store."""
    config = demo_config(tmp_path, ", reference: model")
    text = config.read_text().replace("seed: 0}", "seed: 0, n_sequences: 6, sequence_length: 200}")
    config.write_text(text)
    ingest(load_config(config), RootLayout(root))
    fill_demo_predictions(root)
    summary = analyze_flow(str(config), str(root))
    assert summary.styles.reference == "model"
    client = mlflow_client(root)
    run = client.get_run(summary.mlflow_run_id)
    assert "krippendorff_alpha" in run.data.metrics and "n_flagged_constant" in run.data.metrics
    logged = json.loads(Path(client.download_artifacts(run.info.run_id, "styles.json", str(tmp_path))).read_text())
    assert logged == summary.styles.model_dump(mode="json")
    figures = {f.path for f in client.list_artifacts(run.info.run_id, "figures")}
    assert {"figures/style_confusions.png", "figures/style_quality.png"} <= figures
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "tables/styles_annotators.json",
                                                      str(tmp_path))).read_text())
    assert [row[0] for row in table["data"]] == summary.annotators
    from prefect.artifacts import Artifact

    artifact = Artifact.get("analyze-demo")
    assert artifact is not None and "Style cards" in artifact.data
    assert main(["analyze", str(config), "--root", str(root)]) == 0
    printed = capsys.readouterr().out
    assert "Krippendorff's alpha" in printed and "against the model" in printed
