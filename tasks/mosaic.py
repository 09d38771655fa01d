"""Task: put the predicted scenes on one grid, blending their overlaps."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from p2p.core.cache import StageRecord
from p2p.core.config import MosaicConfig
from p2p.infer.mosaic import mosaic_stage
from p2p.raster.geotiff import OutputFormat
from p2p.stages.pipeline import mosaic_stage_key
from tasks.common import publish_record, stage_cache, transient_failure


def _key(p: dict[str, Any]) -> tuple[str, str, str]:
    key = mosaic_stage_key(p["predictions"], p["config"], p["output_format"])
    return p["workspace"], "mosaic", key


@task(
    name="mosaic",
    cache_key_fn=stage_cache(_key),
    persist_result=True,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=transient_failure,
)
def mosaic(
    workspace: str, predictions: list[str], config: MosaicConfig, output_format: OutputFormat
) -> StageRecord:
    """Mosaic the predictions (union of extents, distance-to-edge blending of overlaps)."""
    record = mosaic_stage(workspace, predictions, config, output_format)
    get_run_logger().info("mosaic of %d scenes → %s", len(predictions), record.summary["output"])
    publish_record(record, "mosaic")
    return record
