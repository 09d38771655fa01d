"""Task runs on an external Dask cluster (``dask scheduler`` + ``dask worker`` processes) report
to the flow's Prefect server, whether that is a real server or the flow's temporary one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from distributed import Client

from p2p.core.config import BatchPredictConfig, DaskConfig, PredictConfig
from p2p.core.dask_client import remote_hosts
from p2p.model.bundle import write_bundle
from p2p.model.networks import UNetGenerator
from tests.s3server import free_port
from tests.test_inference import NUM_DOWNS, _meta, _source

DASK = str(Path(sys.executable).with_name("dask"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, psutil.Process]]:
    """An external scheduler and one worker process: (address, the worker command's process)."""
    folder = tmp_path_factory.mktemp("cluster")
    address = f"tcp://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["OMP_NUM_THREADS"] = "1"
    common: dict[str, Any] = {"env": env, "cwd": Path(__file__).parents[1]}
    with open(folder / "scheduler.log", "w") as log:
        scheduler = subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
             "--no-dashboard"], stdout=log, stderr=subprocess.STDOUT, **common,
        )  # fmt: skip
    with open(folder / "worker.log", "w") as log:
        worker = subprocess.Popen(
            [DASK, "worker", address, "--nthreads", "1", "--no-dashboard",
             "--local-directory", str(folder / "worker")], stdout=log, stderr=subprocess.STDOUT,
            **common,
        )  # fmt: skip
    try:
        with Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=60)
        yield address, psutil.Process(worker.pid)
    finally:
        for proc in (worker, scheduler):
            proc.terminate()
            proc.wait(timeout=30)


def _prefect_servers(process: psutil.Process) -> list[str]:
    """Command lines of Prefect servers started under `process`."""
    lines = [" ".join(p.cmdline()) for p in process.children(recursive=True)]
    return [line for line in lines if "prefect" in line and "server" in line]


def _batch(tmp_path: Path, address: str) -> BatchPredictConfig:
    torch.manual_seed(0)
    generator = UNetGenerator(2, 1, num_downs=NUM_DOWNS, ngf=4, norm="batch", dropout=0.0)
    write_bundle(tmp_path / "model", generator.eval(), _meta("uint16", None))
    (tmp_path / "in").mkdir()
    for name in ("a", "b"):
        _source(tmp_path / "in" / f"{name}.tif", 40, 48)
    return BatchPredictConfig(
        workspace=str(tmp_path / "ws"),
        model=str(tmp_path / "model"),
        scenes=[str(tmp_path / "in" / "*.tif")],
        output=str(tmp_path / "mosaic.tif"),
        predict=PredictConfig(tile_size=32, overlap=4, output_format="gtiff", device="cpu"),
        dask=DaskConfig(address=address),
    )


# Run a batch and list the task runs its own Prefect server holds for it (run in a process of
# its own: without PREFECT_API_URL, the flow starts a temporary server).
TASK_RUNS = """
import json, sys
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter, ArtifactFilterTaskRunId as TaskRun, FlowRunFilter, FlowRunFilterId,
    FlowRunFilterParentFlowRunId as Parent,
)
from flows.batch_predict import batch_predict
from p2p.core.config import BatchPredictConfig

def task_runs(flow_run_id):
    # (name, state, artifacts) of the predict task runs this process's server holds
    with get_client(sync_client=True) as client:
        subflows = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=Parent(any_=[flow_run_id]))
        )
        ids = [flow_run_id, *(f.id for f in subflows)]
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
        runs = [r for r in runs if r.name in ("predict-a", "predict-b")]
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(task_run_id=TaskRun(any_=[r.id for r in runs]))
        )
    made = [str(a.task_run_id) for a in artifacts]
    ran = sorted((r.name, r.state.name, made.count(str(r.id))) for r in runs)
    return {"runs": ran, "subflows": [sorted(f.parameters) + [f.parameters.get("scenes")]
                                      for f in subflows]}

if __name__ == "__main__":
    config = BatchPredictConfig.model_validate_json(sys.argv[1])
    state = batch_predict(config, return_state=True)
    print(json.dumps(task_runs(state.state_details.flow_run_id)))
"""


@pytest.mark.slow
def test_worker_task_runs_land_on_the_flows_temporary_server(
    cluster: tuple[str, psutil.Process], tmp_path: Path
) -> None:
    address, worker = cluster
    script = tmp_path / "batch.py"
    script.write_text(textwrap.dedent(TASK_RUNS))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), OMP_NUM_THREADS="1")
    # a loaded machine: no telemetry writes, patience with SQLite's lock and the server start
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_DATABASE_TIMEOUT="60")
    env.update(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120")
    env["PYTHONPATH"] = str(Path(__file__).parents[1])
    done = subprocess.run(
        [sys.executable, str(script), _batch(tmp_path, address).model_dump_json()],
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    runs = seen["runs"]
    # the predictions' subflow takes no per-scene parameter: Prefect pickles a flow run's
    # parameters into every task it hands to Dask (they held all the calls: N x N in all)
    assert seen["subflows"] == [["scenes", "workspace", 2]]
    # the task runs and the artifacts they published are on the flow's server
    assert [(name, state) for name, state, _ in runs] == [
        ("predict-a", "Completed"),
        ("predict-b", "Completed"),
    ]
    assert all(artifacts > 0 for _, _, artifacts in runs)
    with Client(address) as client:
        prefixes = client.run_on_scheduler(
            lambda dask_scheduler: list(dask_scheduler.task_prefixes)
        )
    assert any("predict" in p for p in prefixes)  # they ran on the external worker
    time.sleep(1)
    assert _prefect_servers(worker) == []  # and no worker started a server of its own


def test_workers_on_other_machines_are_told_apart() -> None:
    mine = {"10.0.0.5", "box"}
    assert remote_hosts(["127.0.0.1", "10.0.0.5", "box"], mine) == []
    assert remote_hosts(["127.0.0.1", "10.0.0.9", "gpu-node-2"], mine) == ["10.0.0.9", "gpu-node-2"]
