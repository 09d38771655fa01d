"""Task: deliver the mosaic to its output path and publish the batch report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_image_artifact, create_markdown_artifact

from p2p.app.demo import DemoScenes, report_stage, report_stage_key
from p2p.core.cache import StageRecord
from p2p.stages.report import deliver_file
from tasks.common import publish_record, stage_cache, transient_failure


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


def _report_key(p: dict[str, Any]) -> tuple[str, str, str]:
    return p["workspace"], "report", report_stage_key(p["mosaic"], p["data"])


@task(name="demo-report", cache_key_fn=stage_cache(_report_key), persist_result=True)
def demo_report(workspace: str, mosaic: str, data: DemoScenes) -> StageRecord:
    """Score the demo's held-out mosaic against its map and draw the comparison picture."""
    record = report_stage(workspace, mosaic, data)
    create_markdown_artifact(
        Path(record.path, "report.md").read_text(),
        key="p2p-demo-report",
        description="Demo: held-out mosaic vs map",
    )
    create_image_artifact(str(Path(workspace) / "report.png"), key="p2p-demo-picture")
    publish_record(record, "demo report")
    return record
