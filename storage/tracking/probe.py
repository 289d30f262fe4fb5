"""What a representation probe records in MLflow.

One run per probe: the whole config as params; the dataset store as an input; per encoder and
target `<encoder>.<target>.accuracy`, `.mi` (the lower bound, nats), `.mi_low` / `.mi_high`,
`.few_shot_<fraction>`, and `chance.<target>` / `entropy.<target>`; the table (`tables/probe.json`
in the MLflow table viewer, `tables/probe_table.csv`), the figures (`figures/probe.png`,
`figures/few_shot.png`, `figures/simclr_loss.png`); the SimCLR run's NT-Xent per epoch
(`simclr.loss`) and its encoder weights (`simclr/encoder.pt`).

The probe stage has written the table and the figures to `result.outputs` already; this module
only logs them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import mlflow

from configs.schema import PipelineConfig
from storage.layout import RootLayout
from storage.results.probe import ProbeResult
from storage.tracking import log_metrics, log_store_input, stage_run
from storage.tracking.train import metric_key


def probe_metrics(result: ProbeResult) -> dict[str, float | None]:
    """The probe's numbers as flat MLflow metrics."""
    out: dict[str, float | None] = {}
    for enc in result.encoders:
        for t in result.targets:
            r = result.results[enc][t]
            key = f"{metric_key(enc)}.{metric_key(t)}"
            out[f"{key}.accuracy"] = r.accuracy
            out[f"{key}.mi"] = r.mutual_information
            span = r.interval.mutual_information
            if span:
                out[f"{key}.mi_low"], out[f"{key}.mi_high"] = span
            for fraction, acc in r.few_shot.items():
                out[f"{key}.few_shot_{fraction}"] = acc
    for t in result.targets:
        out[f"chance.{metric_key(t)}"] = result.chance[t]
        out[f"entropy.{metric_key(t)}"] = result.entropy[t]
    out["seconds"] = result.seconds
    return out


def record_probe(layout: RootLayout, config: PipelineConfig, result: ProbeResult, *,
                 table: Sequence[Mapping[str, str | int | float | None]], config_path: Path | None = None) -> str:
    """One MLflow run for one probe; returns its run id.

    `table` is the probe table (one row per encoder and target), logged for MLflow's table viewer.
    """
    tags = {"annostyle.version": result.version, "annostyle.store": result.store,
            "annostyle.encoders": ",".join(result.encoders), "annostyle.targets": ",".join(result.targets)}
    for name, run_id in result.model_run_ids.items():
        if run_id:
            tags[f"annostyle.model_run_id.{name}"] = run_id
    with stage_run(layout, result.dataset, "probe", config.model_dump(mode="json"), tags) as run:
        run_id = run.info.run_id
        log_store_input(result.store, result.dataset, result.version, context="probe")
        log_metrics(probe_metrics(result))
        mlflow.log_table({k: [r.get(k) for r in table] for k in table[0]}, "tables/probe.json")
        outputs = Path(result.outputs)
        mlflow.log_artifact(str(outputs / "probe_table.csv"), "tables")
        mlflow.log_artifacts(str(outputs / "figures"), "figures")
        if result.simclr:
            for h in result.simclr.history:
                log_metrics({"simclr.loss": h.loss}, step=h.epoch + 1)
            mlflow.log_artifact(result.simclr.weights, "simclr")
        mlflow.log_dict(result.model_copy(update={"mlflow_run_id": run_id}).to_json(), "summary.json")
        if config_path is not None:
            mlflow.log_artifact(str(config_path), "config")
        return run_id
