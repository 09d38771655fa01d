"""Task: evaluate the bundled model on the validation split."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from p2p.core.cache import StageRecord
from p2p.core.config import PredictConfig
from p2p.stages.pipeline import evaluate_stage, evaluate_stage_key
from p2p.stages.report import metrics_markdown
from tasks.common import publish_record, stage_cache


def _key(p: dict[str, Any]) -> tuple[str, str, str]:
    key = evaluate_stage_key(p["train"].key, p["dataset"].key, p["predict"])
    return p["workspace"], "evaluate", key


@task(name="evaluate-model", cache_key_fn=stage_cache(_key), persist_result=True, tags=["gpu"])
def evaluate_model(
    workspace: str, train: StageRecord, dataset: StageRecord, predict: PredictConfig
) -> StageRecord:
    """Per-band MAE/RMSE/PSNR/SSIM of the bundle on the validation chips (target units)."""
    record = evaluate_stage(workspace, train, dataset, predict)
    metrics = record.summary["metrics"]
    get_run_logger().info("evaluate: %s", metrics.get("overall"))
    create_markdown_artifact(
        f"# Evaluation on the validation split\n\nModel: `{train.summary['model']}`  \n"
        f"Chips: {record.summary['n_chips']}  \nPreview: `{train.summary['preview']}`\n\n"
        f"{metrics_markdown(metrics)}\n",
        key="p2p-evaluate-report",
        description="Evaluation report",
    )
    publish_record(record, "evaluate")
    return record
