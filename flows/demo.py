"""Flow: the demo — sample scenes → train_pipeline → batch_predict two held-out scenes →
the report stage (held-out mosaic vs its map) → report.png and report.md in the workspace."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow

from flows.batch_predict import batch_predict
from flows.train_pipeline import train_pipeline
from p2p.demo import demo_batch_config, demo_config, write_demo_scenes
from p2p.stages.pipeline import DEMO_REPORT, ReportJob, run_pipeline
from p2p.stages.record import RunRecord
from tasks.common import publish_run
from tasks.stages import run_action, run_on_prefect


@flow(name="p2p-demo")
def demo_flow(
    workspace: str = "demo-work", scene_size: int = 384, quick: bool = False
) -> dict[str, Any]:
    """Run the whole product on synthetic satellite → map scenes, on the CPU.

    Args:
        workspace: Folder for the sample data, every stage's artifacts and the report.
        scene_size: Side of each sample scene in pixels.
        quick: Tiny model and two epochs (tests).

    Returns:
        The run record (`p2p.stages.record.RunRecord`): the trained model, every stage of the
        three pipelines, the held-out mosaic's metrics and the report picture.
    """
    start = time.perf_counter()
    ws = str(Path(workspace).resolve())
    data = write_demo_scenes(Path(ws) / "data", scene_size)
    trained = train_pipeline(demo_config(ws, data.train, quick))
    predicted = batch_predict(demo_batch_config(ws, trained["model"], data, quick))
    job = ReportJob(ws, predicted["output"], data.union_source, data.union_target)
    scored = run_pipeline(DEMO_REPORT, job, run_on_prefect, run_action)
    record = RunRecord(
        pipeline="demo",
        workspace=ws,
        model=trained["model"],
        output=predicted["output"],
        written=predicted["written"],
        scenes=[*trained["scenes"], *predicted["scenes"]],
        stages={**trained["stages"], **predicted["stages"], **scored["stages"]},
        metrics={**scored["metrics"], "validation": trained["metrics"]},
        seconds=round(time.perf_counter() - start, 3),
        report=scored["report"],
    ).model_dump()
    publish_run(record, "demo")
    return record
