"""Task: train Pix2Pix on the dataset and bundle the generator."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from p2p.core.cache import StageRecord
from p2p.core.config import ModelConfig, TrainConfig
from p2p.model.training import TrainProgress
from p2p.stages.pipeline import train_stage, train_stage_key
from p2p.stages.report import metrics_markdown
from tasks.common import StageProgress, publish_record, stage_cache


def _key(p: dict[str, Any]) -> tuple[str, str, str]:
    return p["workspace"], "train", train_stage_key(p["dataset"].key, p["model"], p["train"])


@task(name="train-model", cache_key_fn=stage_cache(_key), persist_result=True, tags=["gpu"])
def train_model(
    workspace: str, dataset: StageRecord, model: ModelConfig, train: TrainConfig
) -> StageRecord:
    """Train (resuming the newest checkpoint of an unfinished run) and write the bundle."""
    bar = StageProgress("train", "p2p-train-progress")

    def progress(p: TrainProgress) -> None:
        bar((p.epoch - 1) * p.steps_per_epoch + p.step, p.epochs * p.steps_per_epoch)

    record = train_stage(workspace, dataset, model, train, progress=progress)
    s = record.summary
    get_run_logger().info("train: %s epochs, bundle %s", s["epochs"], s["model"])
    create_markdown_artifact(
        f"# Training\n\nBundle: `{s['model']}`  \nEpochs: {s['epochs']}  \n"
        f"Last preview (source | generated | target): `{s['preview']}`\n\n"
        f"## Validation metrics (target units)\n\n{metrics_markdown(s['metrics'])}\n",
        key="p2p-train-report",
        description="Training report",
    )
    publish_record(record, "train")
    return record
