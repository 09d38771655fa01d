"""Flow: the prediction pipeline (`p2p.stages.pipeline.PREDICTION`): check the model and every
scene (globs expanded) → predict every scene → mosaic them → deliver the mosaic and a report.

Scenes already predicted with the same model and settings are cached, so a scheduled run only
predicts the new ones. With `dask.address` set, the scenes are predicted on that Dask cluster
through prefect-dask's `DaskTaskRunner` (its workers must see the workspace and the scenes),
and their task runs report to this flow's Prefect server (`tasks.cluster`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prefect import Flow, flow
from prefect.runtime import deployment

from p2p.core.cache import StageRecord
from p2p.core.config import BatchPredictConfig
from p2p.core.roots import checked_batch_config
from p2p.core.threads import use_threads
from p2p.stages import predict
from p2p.stages.pipeline import PREDICTION, Call, PredictionJob, Runner, run_pipeline
from p2p.stages.stage import Stage
from p2p.stages.watch import stall_after
from tasks.cluster import reporting_runner
from tasks.common import publish_run
from tasks.stages import run_action, run_on_prefect


def predict_scenes(calls: Sequence[Call]) -> Flow[[str, int], list[StageRecord]]:
    """The predictions' subflow over `calls`, which it takes from this closure rather than as a
    parameter: Prefect hands every task it submits to a Dask cluster its flow run's context,
    parameters included (pickled with the task), so N calls as a parameter made each of the N
    tasks carry all N (539 KB a task at N = 1024: a quadratic load on the scheduler). Its
    parameters are the workspace and the number of scenes; the task runs name the scenes."""

    @flow(name="predict-scenes")
    def predict_scenes(workspace: str, scenes: int) -> list[StageRecord]:
        """Predict each scene on its own grid, on whichever task runner this flow was given."""
        return run_on_prefect(predict.STAGE, workspace, calls)

    return predict_scenes


FanOut = Callable[[str, Sequence[Call]], list[StageRecord]]


@contextlib.contextmanager
def _fan_out(address: str | None) -> Iterator[FanOut]:
    """The predictions as a subflow: on the Dask cluster at `address` when given, its task runs
    reporting to this flow's server while the block runs."""
    if not address:
        yield _predict_on(None)
        return
    with reporting_runner(address) as runner:
        yield _predict_on(runner)


def _predict_on(runner: Any) -> FanOut:
    """Predictions in a `predict_scenes` subflow on `runner` (None: the flow's default)."""

    def fan_out(workspace: str, calls: Sequence[Call]) -> list[StageRecord]:
        subflow = predict_scenes(calls)
        if runner is not None:
            subflow = subflow.with_options(task_runner=runner)
        return subflow(workspace, len(calls))

    return fan_out


def _runner(fan_out: FanOut) -> Runner:
    """Predictions fan out in a subflow (`fan_out`); the other stages run as tasks here."""

    def run(stage: Stage, workspace: str, calls: Sequence[Call]) -> list[StageRecord]:
        if stage.name == predict.NAME:
            return fan_out(workspace, calls)
        return run_on_prefect(stage, workspace, calls)

    return run


@flow(name="batch-predict")
def batch_predict(config: BatchPredictConfig) -> dict[str, Any]:
    """Translate a batch of scenes into one mosaic GeoTIFF at `config.output`.

    Returns:
        The run record (`p2p.stages.record.RunRecord`): workspace, model, output, scenes, every
        stage's key/path/cached/seconds.
    """
    config, scenes = checked_batch_config(config, require_roots=deployment.id is not None)
    use_threads(config.threads)  # this process and its tasks (P2P_THREADS when set)
    job = PredictionJob(
        config.workspace, config.model, scenes, config.predict, config.mosaic, config.output
    )
    with _fan_out(config.dask.address) as fan_out, stall_after(config.watchdog_s):
        record = run_pipeline(PREDICTION, job, _runner(fan_out), run_action)
    publish_run(record, "batch-predict")
    return record
