"""Flow: tile every scene → assemble the dataset → train → evaluate, each stage cached."""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, unmapped

from p2p.core.cache import StageRecord
from p2p.core.config import PipelineConfig
from p2p.stages.pipeline import checked_pipeline_config, run_record
from tasks.common import publish_run, results_storage
from tasks.dataset import assemble_dataset
from tasks.evaluate import evaluate_model
from tasks.tile import tile_scene
from tasks.train import train_model

Stage = Literal["tile", "dataset", "train", "evaluate"]


def _finish(workspace: str, stages: dict[str, StageRecord]) -> dict[str, Any]:
    record = run_record(workspace, stages)
    publish_run(record, "train-pipeline")
    return record


@flow(name="train-pipeline")
def train_pipeline(config: PipelineConfig, until: Stage | None = None) -> dict[str, Any]:
    """Train Pix2Pix on the configured scene pairs; stop after stage `until` when given.

    Returns:
        The run record: workspace, model bundle folder, per-stage key/path/cached/seconds, and
        the evaluation metrics (target units).
    """
    config = checked_pipeline_config(config)
    ws = config.workspace
    store = results_storage(ws)
    stages: dict[str, StageRecord] = {}

    tile = tile_scene.with_options(result_storage=store)
    tiles = tile.map(ws, config.scenes, unmapped(config.tiling), unmapped(config.dask)).result()
    stages |= {f"tile:{s.scene_id}": t for s, t in zip(config.scenes, tiles, strict=True)}
    if until == "tile":
        return _finish(ws, stages)

    assemble = assemble_dataset.with_options(result_storage=store)
    stages["dataset"] = assemble(ws, [t.path for t in tiles], config.dataset, config.tiling)
    if until == "dataset":
        return _finish(ws, stages)

    train = train_model.with_options(result_storage=store)
    stages["train"] = train(ws, stages["dataset"], config.model, config.train)
    if until == "train":
        return _finish(ws, stages)

    evaluate = evaluate_model.with_options(result_storage=store)
    stages["evaluate"] = evaluate(ws, stages["train"], stages["dataset"], config.predict)
    return _finish(ws, stages)
