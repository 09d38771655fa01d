"""Flow: the training pipeline (`p2p.stages.pipeline.TRAINING`): check every scene → import/tile
every scene → assemble the dataset → train → evaluate, each stage cached in the workspace."""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow
from prefect.runtime import deployment

from p2p.core.config import PipelineConfig
from p2p.core.roots import checked_pipeline_config
from p2p.core.threads import use_threads
from p2p.stages.pipeline import TRAINING, run_pipeline
from p2p.stages.watch import stall_after
from tasks.common import publish_run
from tasks.stages import run_action, run_on_prefect

#: `p2p.stages.pipeline.UNTIL` as a Literal, so the Prefect UI offers a choice (tests/test_plan.py
#: checks the two agree).
Until = Literal["tile", "dataset", "train", "evaluate"]


@flow(name="train-pipeline")
def train_pipeline(config: PipelineConfig, until: Until | None = None) -> dict[str, Any]:
    """Train Pix2Pix on the configured scenes; stop after stage `until` when given.

    Returns:
        The run record (`p2p.stages.record.RunRecord`): workspace, model bundle folder, every
        stage's key/path/cached/seconds, and the evaluation metrics (target units).
    """
    config = checked_pipeline_config(config, require_roots=deployment.id is not None)
    use_threads(config.threads)  # this process and its tasks (P2P_THREADS when set)
    with stall_after(config.watchdog_s):
        record = run_pipeline(TRAINING, config, run_on_prefect, run_action, until)
    publish_run(record, "train-pipeline")
    return record
