"""`annostyle probe` on the demo, end to end: a real Prefect flow run, the real demo store, the
supervised model trained by the flow, SimCLR pretraining and fine-tuning, a real MLflow SQLite
store. The check: the supervised and the self-supervised encoders hold far more of the behaviour
than the random encoder and the raw features, and the shuffled control holds none."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import CONFIGS

from configs.schema import load_config
from flows.cli import main
from storage.layout import RootLayout
from storage.model_store import SUMMARY
from storage.tracking import tracking_uri
from tasks.ingest import ingest


@pytest.fixture(scope="module")
def probed(prefect_harness, tmp_path_factory):
    folder = tmp_path_factory.mktemp("probe-demo")
    config = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    config["probe"]["encoders"] = ["raw", "random", "supervised", "simclr", "simclr_finetuned"]
    path = folder / "demo.yaml"
    path.write_text(yaml.safe_dump(config))
    root = folder / "root"
    ingest(load_config(path), RootLayout(root))
    return root, path


def run_probe(root: Path, config: Path, capsys) -> dict:
    assert main(["probe", str(config), "--root", str(root), "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.slow
def test_probe_on_the_demo(probed, capsys):
    root, config = probed
    out = run_probe(root, config, capsys)
    assert set(out) >= {"encoders", "targets", "probe_accuracy", "mutual_information", "chance"}
    assert out["encoders"] == ["raw", "random", "supervised", "simclr", "simclr_finetuned"]
    assert out["targets"] == ["gold", "consensus", "shuffled"]
    assert out["skipped_targets"] == {"annotator": "no frame has exactly one annotator"}  # 4 per sequence
    acc, mi = out["probe_accuracy"], out["mutual_information"]
    for target in ("gold", "consensus"):
        for learned in ("supervised", "simclr", "simclr_finetuned"):
            for baseline in ("random", "raw"):
                assert acc[learned][target] > acc[baseline][target] + 0.05, (learned, baseline, target)
            assert mi[learned][target] > mi["random"][target] + 0.1
        assert acc["random"][target] > out["chance"][target]  # temporal context alone helps
    for enc in out["encoders"]:
        assert abs(mi[enc]["shuffled"]) < 0.05
        assert abs(acc[enc]["shuffled"] - out["chance"]["shuffled"]) < 0.03
        for target in out["targets"]:
            assert mi[enc][target] <= out["entropy"][target]

    client = mlflow.MlflowClient(tracking_uri(RootLayout(root)))
    run = client.get_run(out["mlflow_run_id"])
    assert run.data.tags["annostyle.stage"] == "probe"
    assert run.data.metrics["simclr.gold.accuracy"] == pytest.approx(acc["simclr"]["gold"])
    assert run.data.metrics["chance.gold"] == pytest.approx(out["chance"]["gold"])
    artifacts = {a.path for folder in ("figures", "tables", "simclr") for a in client.list_artifacts(run.info.run_id,
                                                                                                    folder)}
    assert {"figures/probe.png", "figures/few_shot.png", "figures/simclr_loss.png", "tables/probe.json",
            "tables/probe_table.csv", "simclr/encoder.pt"} <= artifacts
    for name in ("supervised", "simclr_finetuned"):  # each model has its own recorded training run
        model_run = client.get_run(run.data.tags[f"annostyle.model_run_id.{name}"])
        assert model_run.data.tags["annostyle.stage"] == "train"
    tuned = client.get_run(run.data.tags["annostyle.model_run_id.simclr_finetuned"])
    assert tuned.data.params["train.encoder.weights"].endswith("encoder.pt")

    # a second probe reuses the trained models and the pretrained encoder: no new training run
    runs_before = len(client.search_runs([run.info.experiment_id]))
    again = run_probe(root, config, capsys)
    assert again["probe_accuracy"] == out["probe_accuracy"]
    assert len(client.search_runs([run.info.experiment_id])) == runs_before + 1
    assert len(list(root.glob(f"models/demo/*/{SUMMARY}"))) == 3  # supervised, simclr, fine-tuned


def test_probe_needs_features(prefect_harness, tmp_path, capsys):
    root = tmp_path / "root"
    ingest(load_config(CONFIGS / "bluebirds.yaml"), RootLayout(root))
    assert main(["probe", str(CONFIGS / "bluebirds.yaml"), "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "bluebirds.zarr" in err and "features" in err and "labels only" in err
    assert not (root / "models").exists() and not (root / "probes").exists()  # nothing trained or written
