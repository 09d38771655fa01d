"""Flow: the prediction pipeline (`p2p.stages.pipeline.PREDICTION`): predict every scene
(globs expanded) → mosaic them → deliver the mosaic and a report.

Scenes already predicted with the same model and settings are cached, so a scheduled run only
predicts the new ones. With `dask.address` set, the scenes are predicted on that Dask cluster
through prefect-dask's `DaskTaskRunner` (its workers must see the workspace and the scenes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefect import flow
from prefect_dask.task_runners import DaskTaskRunner

from p2p.core.cache import StageRecord
from p2p.core.config import BatchPredictConfig
from p2p.core.roots import checked_batch_config
from p2p.stages import mosaic, predict
from p2p.stages.pipeline import (
    PREDICTION,
    Call,
    PredictionJob,
    Runner,
    prediction_record,
    run_steps,
)
from p2p.stages.stage import Stage
from tasks.common import publish_run
from tasks.reports import deliver_mosaic
from tasks.stages import run_on_prefect


@flow(name="predict-scenes")
def predict_scenes(workspace: str, calls: list[tuple[str, dict[str, Any]]]) -> list[StageRecord]:
    """Predict each scene on its own grid, on whichever task runner this flow was given."""
    return run_on_prefect(predict.STAGE, workspace, calls)


def _runner(address: str | None) -> Runner:
    """Predictions fan out in a subflow (on the Dask cluster at `address` when given)."""
    fan_out = predict_scenes
    if address:
        runner: Any = DaskTaskRunner(address=address)
        fan_out = predict_scenes.with_options(task_runner=runner)

    def run(stage: Stage, workspace: str, calls: Sequence[Call]) -> list[StageRecord]:
        if stage.name == predict.NAME:
            return fan_out(workspace, list(calls))
        return run_on_prefect(stage, workspace, calls)

    return run


@flow(name="batch-predict")
def batch_predict(config: BatchPredictConfig) -> dict[str, Any]:
    """Translate a batch of scenes into one mosaic GeoTIFF at `config.output`.

    Returns:
        The run record: workspace, output, scenes, per-stage key/path/cached/seconds.
    """
    config, scenes = checked_batch_config(config)
    job = PredictionJob(config.workspace, config.model, scenes, config.predict, config.mosaic)
    stages = run_steps(PREDICTION, job, job.workspace, _runner(config.dask.address))
    predictions = [r for r in stages.values() if r.stage == predict.NAME]
    deliver_mosaic(stages[mosaic.NAME], predictions, config.output)
    record = prediction_record(job, config.output, stages)
    publish_run(record, "batch-predict")
    return record
