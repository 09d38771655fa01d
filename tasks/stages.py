"""Prefect tasks made from stages by one factory, and the runner the flows use.

`stage_task` wraps a `Stage`'s run function: the task has the run function's parameters
(minus the progress callback and Dask client, which the task supplies or leaves out), sizes
its threads (`p2p.core.threads.task_budget`: a share of a Dask worker's cores), logs,
publishes the stage's own report with its record folded in (one card per reporting stage, so
the reports are what a run page shows) or else the record as a table artifact, and finishes
as ``Cached`` when the stage found its manifest. No cache policy and no persisted result: the
manifest decides, and nothing is written for Prefect to unpickle later. The task table is
derived from the stages the pipelines declare (`p2p.stages.pipeline.stages`): the
task's name, retries, GPU tag and report all come from the `Stage`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from prefect import Task, get_run_logger
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.states import Completed

from p2p.core.cache import StageRecord
from p2p.core.threads import apply_budget, task_budget
from p2p.stages.pipeline import Call, stages
from p2p.stages.stage import Stage
from tasks.common import (
    StageProgress,
    artifact_key,
    folded,
    publish_record,
    publish_stage_report,
    transient_failure,
)

#: Run-function parameters a task does not expose: it supplies the first, the second is local.
SUPPLIED = ("progress", "client")
#: The tag of the stages that want the accelerator; ``prefect concurrency-limit create gpu N``.
GPU_TAG = "gpu"


def stage_task(stage: Stage) -> Task[..., StageRecord]:
    """A Prefect task that runs `stage` (see the module docstring); retries are of transient
    failures only, never of a `P2PError` (bad input stays bad)."""
    signature = inspect.signature(stage.run)
    exposed = [p for n, p in signature.parameters.items() if n not in SUPPLIED]
    takes_progress = "progress" in signature.parameters

    def call(*args: Any, **kwargs: Any) -> Any:  # the record, or a Cached state holding it
        context = TaskRunContext.get()
        label = context.task_run.name if context else stage.name
        arguments = signature.bind(*args, **kwargs).arguments
        apply_budget(task_budget())  # on a Dask worker: its cores over its task slots
        bar = StageProgress(label, artifact_key("p2p", label, "progress"))
        record: StageRecord = stage.run_watched(label, arguments, bar if takes_progress else None)
        state = "cached" if record.cached else f"built in {record.seconds:.1f} s"
        get_run_logger().info("%s: %s, %s", label, state, record.path)
        report = stage.report(record, arguments) if stage.report is not None else None
        if report is None:
            publish_record(record, label)
        else:  # the record folded into the report: the reports are the cards a run shows
            publish_stage_report(folded(report, record, label))
        return Completed(data=record, name="Cached") if record.cached else record

    call.__signature__ = signature.replace(parameters=exposed)  # type: ignore[attr-defined]
    call.__name__ = call.__qualname__ = stage.task.replace("-", "_")
    call.__doc__ = stage.run.__doc__
    made: Task[..., StageRecord] = Task(
        call,
        name=stage.task,
        retries=stage.retries,
        retry_delay_seconds=5 if stage.retries else 0,
        retry_condition_fn=transient_failure if stage.retries else None,
        tags=[GPU_TAG] if stage.gpu else None,
        cache_policy=NO_CACHE,
        persist_result=False,
    )
    return made


#: One task per stage the pipelines declare, by stage name.
TASKS: dict[str, Task[..., StageRecord]] = {stage.name: stage_task(stage) for stage in stages()}


def gpu_tags() -> list[str]:
    """``["gpu"]`` where this run's Prefect server holds a ``gpu`` tag concurrency limit, else
    none (one API read).

    A tag with no limit limits nothing, but Prefect's task engine still asks the server for a
    slot of it as each tagged task run starts (again whenever its "no such limit" memo, kept
    5 s, has lapsed). On the SQLite server that request (a write transaction, made as the
    server writes the starting run's states) was answered 503 nearly every time, and the
    client waits 2 s before asking again: in `benchmarks/batch.py` one such stall per 5-7 s of
    a many-scene flow, up to a quarter of its wall time. Where the read itself fails the tag
    is kept: a limit that may exist must hold.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            client.read_concurrency_limit_by_tag(GPU_TAG)
    except ObjectNotFound:
        return []
    except Exception:  # the read failed: keep the tag
        return [GPU_TAG]
    return [GPU_TAG]


def run_on_prefect(stage: Stage, workspace: str, calls: Sequence[Call]) -> list[StageRecord]:
    """A pipeline runner (`p2p.stages.pipeline.Runner`): submit each call as the stage's task
    (run name = the call's label, e.g. ``tile-scene_a``) on the flow's task runner; wait for all.
    A GPU stage's tasks carry the ``gpu`` tag where the server limits it (`gpu_tags`)."""
    task_ = TASKS[stage.name]
    if stage.gpu:
        task_ = task_.with_options(tags=gpu_tags())
    futures = [
        task_.with_options(task_run_name=label.replace(":", "-")).submit(workspace, **arguments)
        for label, arguments in calls
    ]
    return [f.result() for f in futures]


def run_action(name: str, action: Callable[[], Any], retries: int) -> Any:
    """A pipeline's check or delivery as a Prefect task (`p2p.stages.pipeline.Action`), so the
    UI shows it and an I/O failure of the delivery is retried."""
    made: Task[..., Any] = Task(
        action,
        name=name,
        task_run_name=name,
        retries=retries,
        retry_delay_seconds=5 if retries else 0,
        retry_condition_fn=transient_failure if retries else None,
        cache_policy=NO_CACHE,
        persist_result=False,
    )
    return made()
