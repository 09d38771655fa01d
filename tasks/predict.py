"""Task: translate one scene with the model bundle."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from p2p.core.cache import StageRecord
from p2p.core.config import PredictConfig, SceneConfig
from p2p.infer.inference import predict_stage
from p2p.stages.pipeline import predict_stage_key
from tasks.common import publish_record, stage_cache, transient_failure


def _key(p: dict[str, Any]) -> tuple[str, str, str]:
    key = predict_stage_key(p["model"], p["scene"], p["config"])
    return p["workspace"], "predict", key


@task(
    name="predict-scene",
    task_run_name="predict-{scene.scene_id}",
    cache_key_fn=stage_cache(_key),
    persist_result=True,
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=transient_failure,
    tags=["gpu"],
)
def predict_scene(
    workspace: str, model: str, scene: SceneConfig, config: PredictConfig
) -> StageRecord:
    """Predict one scene window by window onto its own grid (cached; resumes row strips)."""
    record = predict_stage(workspace, model, scene, config)
    get_run_logger().info("predict %s → %s", scene.scene_id, record.summary["output"])
    publish_record(record, f"predict {scene.scene_id}")
    return record
