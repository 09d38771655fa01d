"""What the stage tasks publish to Prefect and ask of it: a progress artifact only for a stage
that runs past the throttle interval (reaching 100 % at its end), and the ``gpu`` tag only
where the server holds a ``gpu`` concurrency limit (a tag without one costs a stalled request
per task start on a SQLite server and limits nothing)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
)

from flows.batch_predict import batch_predict
from p2p.core.config import BatchPredictConfig, PredictConfig
from tasks.common import StageProgress
from tasks.stages import GPU_TAG, gpu_tags
from tests.faultkit import write_scene, write_tiny_bundle

pytestmark = pytest.mark.usefixtures("prefect_harness")


def progress_values(key: str) -> list[Any]:
    """The data of every artifact under `key` (a progress artifact's is its percent)."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    return [a.data for a in found]


@task
def report(key: str, pauses: list[float], interval: float) -> None:
    """A stage's progress reports: one at the start, then one after each pause (seconds)."""
    bar = StageProgress("stage", key, interval=interval)
    bar(0, len(pauses))
    for done, pause in enumerate(pauses, 1):
        time.sleep(pause)
        bar(done, len(pauses))


@flow
def stage_flow(key: str, pauses: list[float], interval: float) -> None:
    report(key, pauses, interval)


def test_a_stage_shorter_than_the_interval_publishes_no_progress() -> None:
    stage_flow("p2p-test-short-progress", [0.0, 0.0, 0.0], 30.0)
    assert progress_values("p2p-test-short-progress") == []


def test_a_longer_stage_publishes_its_progress_up_to_100() -> None:
    # created at the first report past the interval (2 of 3), then updated at the end
    stage_flow("p2p-test-long-progress", [0.0, 0.3, 0.0], 0.2)
    assert progress_values("p2p-test-long-progress") == [100.0]


@pytest.fixture
def gpu_limit() -> Iterator[None]:
    """A ``gpu`` tag concurrency limit of 1 on the test server, removed afterwards."""
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=1)
        try:
            yield
        finally:
            client.delete_concurrency_limit_by_tag(GPU_TAG)


def predict_tags(tmp_path: Path, name: str) -> list[list[str]]:
    """Run the batch-predict flow over one tiny scene `name`; the tags of its predict task
    runs (one)."""
    model = write_tiny_bundle(tmp_path / "model")
    scene = write_scene(tmp_path / f"{name}.tif")
    config = BatchPredictConfig(
        workspace=str(tmp_path / "ws"),
        model=str(model),
        scenes=[str(scene)],
        output=str(tmp_path / "mosaic.tif"),
        predict=PredictConfig(tile_size=32, overlap=4, output_format="gtiff", device="cpu"),
    )
    state = batch_predict(config, return_state=True)
    parent = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        subflows = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])
            )
        )
        ids = [parent, *(f.id for f in subflows)]
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
    return [sorted(r.tags) for r in runs if r.name == f"predict-{name}"]


def test_gpu_stages_are_untagged_where_the_server_limits_no_gpu(tmp_path: Path) -> None:
    assert gpu_tags() == []
    assert predict_tags(tmp_path, "plain") == [[]]


@pytest.mark.usefixtures("gpu_limit")
def test_gpu_stages_carry_the_gpu_tag_where_a_limit_exists(tmp_path: Path) -> None:
    assert gpu_tags() == [GPU_TAG]
    assert predict_tags(tmp_path, "limited") == [[GPU_TAG]]
