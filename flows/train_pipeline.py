"""Flow: the training pipeline (`p2p.stages.pipeline.TRAINING`): import/tile every scene →
assemble the dataset → train → evaluate, each stage cached in the workspace."""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow

from p2p.core.config import PipelineConfig
from p2p.core.roots import checked_pipeline_config
from p2p.stages.pipeline import TRAINING, run_record, run_steps
from tasks.common import publish_run
from tasks.stages import run_on_prefect

#: `p2p.stages.pipeline.UNTIL` as a Literal, so the Prefect UI offers a choice (tests/test_plan.py
#: checks the two agree).
Until = Literal["tile", "dataset", "train", "evaluate"]


@flow(name="train-pipeline")
def train_pipeline(config: PipelineConfig, until: Until | None = None) -> dict[str, Any]:
    """Train Pix2Pix on the configured scenes; stop after stage `until` when given.

    Returns:
        The run record: workspace, model bundle folder, per-stage key/path/cached/seconds, and
        the evaluation metrics (target units).
    """
    config = checked_pipeline_config(config)
    stages = run_steps(TRAINING, config, config.workspace, run_on_prefect, until)
    record = run_record(config.workspace, stages)
    publish_run(record, "train-pipeline")
    return record
