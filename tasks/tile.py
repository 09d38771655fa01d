"""Task: tile one training scene pair into the chip store."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from p2p.core.cache import StageRecord
from p2p.core.config import DaskConfig, SceneConfig, TilingConfig
from p2p.data.tiling import tile_stage, tile_stage_key
from tasks.common import StageProgress, artifact_key, publish_record, stage_cache, transient_failure


def _key(p: dict[str, Any]) -> tuple[str, str, str]:
    return p["workspace"], "tile", tile_stage_key(p["scene"], p["tiling"])


@task(
    name="tile-scene",
    task_run_name="tile-{scene.scene_id}",
    cache_key_fn=stage_cache(_key),
    persist_result=True,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=transient_failure,
)
def tile_scene(
    workspace: str, scene: SceneConfig, tiling: TilingConfig, dask: DaskConfig
) -> StageRecord:
    """Cut one scene pair into chips on Dask (cached per scene; resumes finished blocks)."""
    label = f"tile {scene.scene_id}"
    progress = StageProgress(label, artifact_key("p2p-tile", scene.scene_id, "progress"))
    record = tile_stage(workspace, scene, tiling, dask, progress=progress)
    get_run_logger().info(
        "%s: %s chips (%s kept) in %s",
        label,
        record.summary.get("n_chips"),
        record.summary.get("chips_kept"),
        record.path,
    )
    publish_record(record, label)
    return record
