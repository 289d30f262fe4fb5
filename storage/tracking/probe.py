"""What a representation probe records in MLflow.

One run per probe: the whole config as params; the dataset store as an input; per encoder and
target `<encoder>.<target>.accuracy`, `.mi` (the lower bound, nats), `.mi_low` / `.mi_high`,
`.few_shot_<fraction>`, and `chance.<target>` / `entropy.<target>`; the table (`tables/probe.json`
in the MLflow table viewer, `tables/probe_table.csv`), the figures (`figures/probe.png`,
`figures/few_shot.png`, `figures/simclr_loss.png`); the SimCLR run's NT-Xent per epoch
(`simclr.loss`) and its encoder weights (`simclr/encoder.pt`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow

from storage.tracking import log_metrics, log_store_input, stage_run
from storage.tracking.train import metric_key


def probe_metrics(summary: Mapping[str, Any]) -> dict[str, float | None]:
    """The probe's numbers as flat MLflow metrics."""
    out: dict[str, float | None] = {}
    for enc in summary["encoders"]:
        for t in summary["targets"]:
            r = summary["results"][enc][t]
            key = f"{metric_key(enc)}.{metric_key(t)}"
            out[f"{key}.accuracy"] = r["accuracy"]
            out[f"{key}.mi"] = r["mutual_information"]
            span = r["interval"]["mutual_information"]
            if span:
                out[f"{key}.mi_low"], out[f"{key}.mi_high"] = span
            for fraction, acc in r["few_shot"].items():
                out[f"{key}.few_shot_{fraction}"] = acc
    for t in summary["targets"]:
        out[f"chance.{metric_key(t)}"] = summary["chance"][t]
        out[f"entropy.{metric_key(t)}"] = summary["entropy"][t]
    out["seconds"] = summary.get("seconds")
    return out


def record_probe(root: Path, config: Mapping[str, Any], summary: dict[str, Any],
                 config_path: Path | None = None) -> str:
    """One MLflow run for one probe; returns its run id (also set as `summary["mlflow_run_id"]`)."""
    from tasks.representation import probe_table

    dataset = summary["dataset"]
    tags = {"annostyle.version": summary["version"], "annostyle.store": summary["store"],
            "annostyle.encoders": ",".join(summary["encoders"]), "annostyle.targets": ",".join(summary["targets"])}
    for name, run_id in (summary.get("model_run_ids") or {}).items():
        if run_id:
            tags[f"annostyle.model_run_id.{name}"] = run_id
    with stage_run(root, dataset, "probe", config, tags) as run:
        summary["mlflow_run_id"] = run.info.run_id
        log_store_input(summary["store"], dataset, summary["version"], context="probe")
        log_metrics(probe_metrics(summary))
        rows = probe_table(summary)
        mlflow.log_table({k: [r.get(k) for r in rows] for k in rows[0]}, "tables/probe.json")
        outputs = Path(summary["outputs"])
        mlflow.log_artifact(str(outputs / "probe_table.csv"), "tables")
        mlflow.log_artifacts(str(outputs / "figures"), "figures")
        simclr = summary.get("simclr")
        if simclr:
            for h in simclr["history"]:
                log_metrics({"simclr.loss": h["loss"]}, step=int(h["epoch"]) + 1)
            mlflow.log_artifact(simclr["weights"], "simclr")
        mlflow.log_dict(summary, "summary.json")
        if config_path is not None:
            mlflow.log_artifact(str(config_path), "config")
        return run.info.run_id
