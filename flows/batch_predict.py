"""Flow: predict every scene (globs expanded) → mosaic them → deliver the mosaic and report.

Scenes already predicted with the same model and settings are cached, so a scheduled run only
predicts the new ones. With `dask.address` set, the scenes are predicted on that Dask cluster
through prefect-dask's `DaskTaskRunner` (its workers must see the workspace and the scenes).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, unmapped
from prefect_dask.task_runners import DaskTaskRunner

from p2p.core.cache import StageRecord
from p2p.core.config import BatchPredictConfig, PredictConfig, SceneConfig
from p2p.stages.pipeline import checked_batch_config, stage_entry
from tasks.common import publish_run, results_storage
from tasks.mosaic import mosaic
from tasks.predict import predict_scene
from tasks.report import deliver_mosaic


@flow(name="predict-scenes")
def predict_scenes(
    workspace: str, model: str, scenes: list[SceneConfig], config: PredictConfig
) -> list[StageRecord]:
    """Predict each scene on its own grid, on whichever task runner this flow was given."""
    predict = predict_scene.with_options(result_storage=results_storage(workspace))
    return predict.map(unmapped(workspace), unmapped(model), scenes, unmapped(config)).result()


@flow(name="batch-predict")
def batch_predict(config: BatchPredictConfig) -> dict[str, Any]:
    """Translate a batch of scenes into one mosaic GeoTIFF at `config.output`.

    Returns:
        The run record: workspace, output, per-stage key/path/cached/seconds.
    """
    config, scenes = checked_batch_config(config)
    ws = config.workspace
    store = results_storage(ws)

    fan_out = predict_scenes
    if config.dask.address:
        runner: Any = DaskTaskRunner(address=config.dask.address)
        fan_out = predict_scenes.with_options(task_runner=runner)
    predictions = fan_out(ws, config.model, scenes, config.predict)

    outputs = [p.summary["output"] for p in predictions]
    merged = mosaic.with_options(result_storage=store)(
        ws, outputs, config.mosaic, config.predict.output_format
    )
    deliver_mosaic(merged, predictions, config.output)

    stages = {f"predict:{s.scene_id}": p for s, p in zip(scenes, predictions, strict=True)}
    record = {
        "workspace": ws,
        "output": config.output,
        "scenes": [s.scene_id for s in scenes],
        "stages": {name: stage_entry(r) for name, r in {**stages, "mosaic": merged}.items()},
    }
    publish_run(record, "batch-predict")
    return record
