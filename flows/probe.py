"""The probe flow: how much of the behaviour, and of the annotator, an encoder's embeddings hold.

config -> the supervised model (reused when trained on this version, else trained) -> SimCLR
pretraining (and, with `simclr_finetuned`, fine-tuning with the annotator head) -> linear probes
and MI bounds for every encoder and target -> one MLflow run with the table and the figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prefect import flow

from configs.schema import PipelineConfig, load_config
from flows.train import trained_model
from storage.tracking.probe import record_probe
from tasks.representation import open_for_probe, pretrain_task, probe_task, save_summary


def finetune_config(config: PipelineConfig, weights: str) -> PipelineConfig:
    """The config that fine-tunes the pretrained encoder with the annotator head (no baselines)."""
    data = config.model_dump(mode="json", by_alias=True)
    data["train"]["encoder"]["weights"] = str(weights)
    data["train"]["baselines"] = []
    return PipelineConfig.model_validate(data)


@flow(name="probe", validate_parameters=False)
def probe_flow(config_path: str, root: str) -> dict[str, Any]:
    """Probe the config's encoders for its targets on the ingested store; record one MLflow run."""
    config = load_config(config_path)
    root_path, path = Path(root), Path(config_path)
    wanted = set(config.probe.encoders)
    model_dirs: dict[str, Path] = {}
    model_run_ids: dict[str, str | None] = {}
    open_for_probe(config, root_path)  # a store without features fails here, before any training
    if "supervised" in wanted:
        trained = trained_model(config, root_path, path)
        model_dirs["supervised"], model_run_ids["supervised"] = Path(trained["model_dir"]), trained["model_run_id"]
    simclr = None
    if wanted & {"simclr", "simclr_finetuned"}:
        simclr = pretrain_task(config, root_path)
        if "simclr_finetuned" in wanted:
            tuned = trained_model(finetune_config(config, simclr["weights"]), root_path, path)
            model_dirs["simclr_finetuned"] = Path(tuned["model_dir"])
            model_run_ids["simclr_finetuned"] = tuned["model_run_id"]
    summary = probe_task(config, root_path, model_dirs, simclr, model_run_ids)
    record_probe(root_path, config.model_dump(mode="json"), summary, path)
    save_summary(summary)  # now with its MLflow run id
    return summary


def cli_run(args: argparse.Namespace) -> dict[str, Any]:
    return probe_flow(config_path=str(Path(args.config).resolve()), root=str(args.root.resolve()))


def _cell(r: dict[str, Any]) -> str:
    return f"{100 * r['accuracy']:5.1f}% {r['mutual_information']:6.3f}"


def cli_print(summary: dict[str, Any]) -> None:
    targets = summary["targets"]
    print(f"dataset {summary['dataset']} version {summary['version']}: linear probes on held-out sequences "
          f"({summary['held_out_sequences']} sequences, {summary['n_probe_frames']['test']} frames)")
    print("  accuracy and I(Z;Y) lower bound (nats) per target")
    print(f"  {'encoder':18}" + "".join(f"{t:>16}" for t in targets))
    print(f"  {'chance / H(Y)':18}" + "".join(
        f"{100 * summary['chance'][t]:>8.1f}% {summary['entropy'][t]:6.3f}" for t in targets))
    for enc in summary["encoders"]:
        print(f"  {enc:18}" + "".join(f"{_cell(summary['results'][enc][t]):>16}" for t in targets))
    for t, reason in summary["skipped_targets"].items():
        print(f"  target {t} skipped: {reason}")
    print(f"  table and figures: {summary['outputs']}")
    print(f"  MLflow run {summary['mlflow_run_id']}")
