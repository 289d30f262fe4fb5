"""What `annostyle run` and `annostyle reprocess` record beyond each stage's own run.

The stage cache's side (a reused stage's nested run, the cache key each computed result is
tagged with, finding that run again), the lineage tags that lead from the analysis to the
prediction store, the model run and the dataset version, and the parent run's stage table.
"""

from __future__ import annotations

from collections.abc import Mapping

import mlflow

from configs.schema import PipelineConfig
from storage.layout import RootLayout
from storage.results import StageResult
from storage.results.pipeline import StageStatus
from storage.tracking import stage_record, stage_run

CACHE_KEY = "annostyle.cache_key"


def run_with_cache_key(experiment_id: str, key: str) -> str | None:
    """The latest run that computed the result cached under `key` (None if none is recorded)."""
    runs = mlflow.MlflowClient().search_runs([experiment_id], f"tags.`{CACHE_KEY}` = '{key}'",
                                             max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


def tag_cache_key(run_id: str, key: str) -> None:
    """Mark `run_id` as the run that computed the result cached under `key`."""
    mlflow.MlflowClient().set_tag(run_id, CACHE_KEY, key)


def record_reuse(layout: RootLayout, config: PipelineConfig, stage: str, result: StageResult,
                 original: str | None) -> str:
    """A nested run for a stage skipped by the cache: the result it reused and from which run."""
    tags = {"annostyle.reused": "true", "annostyle.reused_from": str(original)}
    with stage_run(layout, config.name, f"{stage} (reused)", config.model_dump(mode="json"), tags) as run:
        mlflow.log_dict(result.to_json(), f"{stage}_summary.json")
        return str(run.info.run_id)


def record_lineage(stages: Mapping[str, StageStatus], version: str, store: str,
                   prediction_store: str | None) -> None:
    """Lineage tags: on the active parent run, the dataset version, its store, the model run, the
    prediction store and the analysis run; on the predict and analyze runs, the model run they
    used; on the analyze run, the predict run."""
    model_run = str(stages["train"].run_id)
    mlflow.set_tags({
        "annostyle.version": version,
        "annostyle.store": store,
        "annostyle.model_run_id": model_run,
        "annostyle.prediction_store": str(prediction_store),
        "annostyle.analysis_run_id": str(stages["analyze"].run_id),
    })
    client = mlflow.MlflowClient()
    for stage in ("predict", "analyze"):
        run_id = stages[stage].run_id if stage in stages else None
        if run_id:
            client.set_tag(run_id, "annostyle.model_run_id", model_run)
    predict = stages.get("predict")
    client.set_tag(str(stages["analyze"].run_id), "annostyle.prediction_run_id",
                   str(predict.run_id if predict else None))


def record_stages(stages: Mapping[str, StageStatus]) -> None:
    """What each stage did, on the active parent run (`pipeline.json` and 0/1 reuse metrics)."""
    stage_record({name: status.model_dump(mode="json") for name, status in stages.items()})


def active_tracking_uri() -> str:
    """The tracking URI the runs just recorded went to."""
    return str(mlflow.get_tracking_uri())
