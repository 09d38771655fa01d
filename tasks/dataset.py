"""Task: assemble the training dataset (split and statistics) from the tiled scenes."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from p2p.core.cache import StageRecord
from p2p.core.config import DatasetConfig, TilingConfig
from p2p.data.dataset import dataset_stage, dataset_stage_key
from tasks.common import publish_record, stage_cache, transient_failure


def _key(p: dict[str, Any]) -> tuple[str, str, str]:
    key = dataset_stage_key(p["tile_dirs"], p["config"], p["tiling"])
    return p["workspace"], "dataset", key


@task(
    name="assemble-dataset",
    cache_key_fn=stage_cache(_key),
    persist_result=True,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=transient_failure,
)
def assemble_dataset(
    workspace: str, tile_dirs: list[str], config: DatasetConfig, tiling: TilingConfig
) -> StageRecord:
    """Split the chips into spatially disjoint train/val blocks and compute band statistics."""
    record = dataset_stage(workspace, tile_dirs, config, tiling)
    get_run_logger().info(
        "dataset: %s train / %s val chips in %s",
        record.summary["n_train"],
        record.summary["n_val"],
        record.path,
    )
    publish_record(record, "dataset")
    return record
