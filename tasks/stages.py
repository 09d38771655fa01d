"""Prefect tasks made from stages by one factory, and the runner the flows use.

`stage_task` wraps a `Stage`'s run function: the task has the run function's parameters
(minus the progress callback and Dask client, which the task supplies or leaves out), logs,
publishes the record as a table artifact, and finishes as ``Cached`` when the stage found its
manifest. No cache policy and no persisted result: the manifest decides, and nothing is
written for Prefect to unpickle later.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prefect import Task, get_run_logger
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.states import Completed

from p2p.core.cache import StageRecord
from p2p.stages import dataset, evaluate, import_tiles, mosaic, predict, report, tile, train
from p2p.stages.pipeline import Call
from p2p.stages.stage import Stage
from tasks.common import StageProgress, artifact_key, publish_record, transient_failure
from tasks.reports import publish_evaluation, publish_report, publish_training

#: (record, the call's arguments) → None: a stage's extra Prefect artifacts.
Publish = Callable[[StageRecord, Mapping[str, Any]], None]
#: Run-function parameters a task does not expose: it supplies the first, the second is local.
SUPPLIED = ("progress", "client")


def stage_task(
    stage: Stage, name: str, *, retries: int = 0, publish: Publish | None = None
) -> Task[..., StageRecord]:
    """A Prefect task that runs `stage` (see the module docstring).

    Args:
        stage: The stage.
        name: Task name in the UI.
        retries: Retries of transient failures (never of a `P2PError`: bad input stays bad).
        publish: Extra artifacts once the stage returned.
    """
    signature = inspect.signature(stage.run)
    exposed = [p for n, p in signature.parameters.items() if n not in SUPPLIED]
    takes_progress = "progress" in signature.parameters

    def call(*args: Any, **kwargs: Any) -> Any:  # the record, or a Cached state holding it
        context = TaskRunContext.get()
        label = context.task_run.name if context else stage.name
        arguments = signature.bind(*args, **kwargs).arguments
        if takes_progress:
            arguments["progress"] = StageProgress(label, artifact_key("p2p", label, "progress"))
        record: StageRecord = stage.run(**arguments)
        state = "cached" if record.cached else f"built in {record.seconds:.1f} s"
        get_run_logger().info("%s: %s, %s", label, state, record.path)
        publish_record(record, label)
        if publish is not None:
            publish(record, arguments)
        return Completed(data=record, name="Cached") if record.cached else record

    call.__signature__ = signature.replace(parameters=exposed)  # type: ignore[attr-defined]
    call.__name__ = call.__qualname__ = name.replace("-", "_")
    call.__doc__ = stage.run.__doc__
    made: Task[..., StageRecord] = Task(
        call,
        name=name,
        retries=retries,
        retry_delay_seconds=5 if retries else 0,
        retry_condition_fn=transient_failure if retries else None,
        tags=["gpu"] if stage.gpu else None,
        cache_policy=NO_CACHE,
        persist_result=False,
    )
    return made


#: One task per stage, by stage name.
TASKS: dict[str, Task[..., StageRecord]] = {
    tile.NAME: stage_task(tile.STAGE, "tile-scene", retries=2),
    import_tiles.NAME: stage_task(import_tiles.STAGE, "import-export-tiles", retries=2),
    dataset.NAME: stage_task(dataset.STAGE, "assemble-dataset", retries=2),
    train.NAME: stage_task(train.STAGE, "train-model", publish=publish_training),
    evaluate.NAME: stage_task(evaluate.STAGE, "evaluate-model", publish=publish_evaluation),
    predict.NAME: stage_task(predict.STAGE, "predict-scene", retries=1),
    mosaic.NAME: stage_task(mosaic.STAGE, "mosaic", retries=2),
    report.NAME: stage_task(report.STAGE, "demo-report", publish=publish_report),
}


def run_on_prefect(stage: Stage, workspace: str, calls: Sequence[Call]) -> list[StageRecord]:
    """A pipeline runner (`p2p.stages.pipeline.Runner`): submit each call as the stage's task
    (run name = the call's label, e.g. ``tile-scene_a``) on the flow's task runner; wait for all."""
    task_ = TASKS[stage.name]
    futures = [
        task_.with_options(task_run_name=label.replace(":", "-")).submit(workspace, **arguments)
        for label, arguments in calls
    ]
    return [f.result() for f in futures]
