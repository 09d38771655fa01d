"""Prefect artifacts beyond the stage records: training, evaluation, demo and batch reports."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_image_artifact, create_markdown_artifact

from p2p.core.cache import StageRecord
from p2p.infer.report import deliver_file, metrics_markdown
from tasks.common import transient_failure


def publish_training(record: StageRecord, _: Mapping[str, Any]) -> None:
    """The training report: bundle, epochs, last preview, validation metrics."""
    s = record.summary
    create_markdown_artifact(
        f"# Training\n\nBundle: `{s['model']}`  \nEpochs: {s['epochs']}  \n"
        f"Last preview (source | generated | target): `{s['preview']}`\n\n"
        f"## Validation metrics (target units)\n\n{metrics_markdown(s['metrics'])}\n",
        key="p2p-train-report",
        description="Training report",
    )


def publish_evaluation(record: StageRecord, arguments: Mapping[str, Any]) -> None:
    """The evaluation report: the bundle's metrics on the validation split."""
    trained: StageRecord = arguments["train"]
    create_markdown_artifact(
        f"# Evaluation on the validation split\n\nModel: `{trained.summary['model']}`  \n"
        f"Chips: {record.summary['n_chips']}  \nPreview: `{trained.summary['preview']}`\n\n"
        f"{metrics_markdown(record.summary['metrics'])}\n",
        key="p2p-evaluate-report",
        description="Evaluation report",
    )


def publish_report(record: StageRecord, arguments: Mapping[str, Any]) -> None:
    """The demo report: held-out mosaic vs map, as markdown and as a picture."""
    create_markdown_artifact(
        Path(record.path, "report.md").read_text(),
        key="p2p-demo-report",
        description="Demo: held-out mosaic vs map",
    )
    picture = Path(arguments["workspace"]) / "report.png"
    create_image_artifact(str(picture), key="p2p-demo-picture")


@task(name="deliver-mosaic", retries=2, retry_delay_seconds=5, retry_condition_fn=transient_failure)
def deliver_mosaic(mosaic: StageRecord, predictions: list[StageRecord], output: str) -> bool:
    """Copy the mosaic to `output` when it changed; a report lists every scene.

    Returns:
        True when `output` was (re)written.
    """
    written = deliver_file(mosaic.summary["output"], output)
    get_run_logger().info("mosaic %s %s", output, "written" if written else "unchanged")
    rows = "\n".join(
        f"| {p.summary['scene']} | {'yes' if p.cached else 'no'} | {p.seconds:.1f} | "
        f"`{p.summary['output']}` |"
        for p in predictions
    )
    create_markdown_artifact(
        f"# Batch prediction\n\nMosaic: `{output}` ({mosaic.summary['width']} x "
        f"{mosaic.summary['height']} px, {mosaic.summary['crs']}), "
        f"{'updated' if written else 'unchanged'}.\n\n"
        f"| scene | cached | seconds | prediction |\n|---|---|---|---|\n{rows}\n",
        key="p2p-batch-predict-report",
        description="Batch prediction report",
    )
    return written
