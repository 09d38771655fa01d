"""Flow: the demo — sample scenes → train_pipeline → batch_predict two held-out scenes →
the report stage (held-out mosaic vs its map) → report.png and report.md in the workspace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.batch_predict import batch_predict
from flows.train_pipeline import train_pipeline
from p2p.demo import demo_batch_config, demo_config, write_demo_scenes
from p2p.stages import report
from p2p.stages.pipeline import stage_entry
from tasks.stages import run_on_prefect


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
        The run record: workspace, model, every stage, the held-out metrics and the report.
    """
    ws = str(Path(workspace).resolve())
    data = write_demo_scenes(Path(ws) / "data", scene_size)
    trained = train_pipeline(demo_config(ws, data.train, quick))
    predicted = batch_predict(demo_batch_config(ws, trained["model"], data, quick))
    arguments = {
        "mosaic": predicted["output"],
        "source": data.union_source,
        "target": data.union_target,
    }
    (scored,) = run_on_prefect(report.STAGE, ws, [(report.NAME, arguments)])
    return {
        "workspace": ws,
        "model": trained["model"],
        "stages": {**trained["stages"], **predicted["stages"], "report": stage_entry(scored)},
        "metrics": scored.summary["metrics"],
        "validation_metrics": trained["metrics"],
        "report": str(Path(ws) / "report.png"),
    }
