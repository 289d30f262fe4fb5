"""The probe flow: how much of the behaviour, and of the annotator, an encoder's embeddings hold.

config -> the supervised model (reused when trained on this version, else trained) -> SimCLR
pretraining (and, with `simclr_finetuned`, fine-tuning with the annotator head) -> linear probes
and MI bounds for every encoder and target -> one MLflow run with the table and the figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from configs.schema import PipelineConfig, load_config
from flows.retry import retry_unless_bad_input
from flows.train import trained_model
from storage.layout import RootLayout
from storage.results.probe import ProbeResult, TargetProbe
from storage.results.train import TrainResult
from storage.tracking.probe import record_probe
from tasks.representation import (
    open_for_probe,
    pretrain_encoder,
    probe_representations,
    probe_table,
    save_summary,
)

pretrain_task = task(name="pretrain-simclr", retries=1, retry_delay_seconds=[2], cache_policy=NO_CACHE,
                     retry_condition_fn=retry_unless_bad_input)(pretrain_encoder)
"""Prefect task; a retry after a crash resumes from the last finished epoch."""

probe_task = task(name="probe", retries=1, retry_delay_seconds=[2], cache_policy=NO_CACHE,
                  retry_condition_fn=retry_unless_bad_input)(probe_representations)
"""Prefect task; probing is cheap and pure, so a retry simply redoes it."""


def finetune_config(config: PipelineConfig, weights: str) -> PipelineConfig:
    """The config that fine-tunes the pretrained encoder with the annotator head (no baselines)."""
    data = config.model_dump(mode="json", by_alias=True)
    data["train"]["encoder"]["weights"] = str(weights)
    data["train"]["baselines"] = []
    return PipelineConfig.model_validate(data)


def model_folder(trained: TrainResult) -> Path:
    """The trained model's folder (a store with features always gets a model)."""
    if trained.model_dir is None:
        raise ValueError(f"training on {trained.store} made no model: {trained.reason}")
    return Path(trained.model_dir)


@flow(name="probe", validate_parameters=False)
def probe_flow(config_path: str, root: str) -> ProbeResult:
    """Probe the config's encoders for its targets on the ingested store; record one MLflow run."""
    config = load_config(config_path)
    layout = RootLayout(Path(root), config.store.uri_prefix)
    path = Path(config_path)
    wanted = set(config.probe.encoders)
    model_dirs: dict[str, Path] = {}
    model_run_ids: dict[str, str | None] = {}
    open_for_probe(config, layout)  # a store without features fails here, before any training
    if "supervised" in wanted:
        trained = trained_model(config, layout, path)
        model_dirs["supervised"], model_run_ids["supervised"] = model_folder(trained), trained.model_run_id
    simclr = None
    if wanted & {"simclr", "simclr_finetuned"}:
        simclr = pretrain_task(config, layout)
        if "simclr_finetuned" in wanted:
            tuned = trained_model(finetune_config(config, simclr.weights), layout, path)
            model_dirs["simclr_finetuned"], model_run_ids["simclr_finetuned"] = model_folder(tuned), tuned.model_run_id
    result = probe_task(config, layout, model_dirs, simclr, model_run_ids)
    result.mlflow_run_id = record_probe(layout, config, result, table=probe_table(result), config_path=path)
    save_summary(result)  # now with its MLflow run id
    return result


def cli_run(args: argparse.Namespace) -> ProbeResult:
    return probe_flow(config_path=str(Path(args.config).resolve()), root=str(args.root.resolve()))


def _cell(r: TargetProbe) -> str:
    return f"{100 * r.accuracy:5.1f}% {r.mutual_information:6.3f}"


def cli_print(result: ProbeResult) -> None:
    targets = result.targets
    print(f"dataset {result.dataset} version {result.version}: linear probes on held-out sequences "
          f"({result.held_out_sequences} sequences, {result.n_probe_frames.test} frames)")
    print("  accuracy and I(Z;Y) lower bound (nats) per target")
    print(f"  {'encoder':18}" + "".join(f"{t:>16}" for t in targets))
    print(f"  {'chance / H(Y)':18}" + "".join(
        f"{100 * result.chance[t]:>8.1f}% {result.entropy[t]:6.3f}" for t in targets))
    for enc in result.encoders:
        print(f"  {enc:18}" + "".join(f"{_cell(result.results[enc][t]):>16}" for t in targets))
    for t, reason in result.skipped_targets.items():
        print(f"  target {t} skipped: {reason}")
    print(f"  table and figures: {result.outputs}")
    print(f"  MLflow run {result.mlflow_run_id}")
