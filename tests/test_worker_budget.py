"""Dask worker processes on one machine divide its cores (issue 23 item 1): the workers p2p
starts are each told their share (``P2P_CORES``), and a task on workers someone else started
counts the task slots of every worker on its host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from distributed import Client, LocalCluster

from p2p.core.config import DaskConfig
from p2p.core.dask_client import dask_client
from p2p.core.threads import CORES_ENV, available_cores, task_budget

ROOT = Path(__file__).resolve().parents[1]
TWO_CORES = sorted(os.sched_getaffinity(0))[:2]
#: two cores in the affinity and in the cgroup quota (a container limited to one CPU has one)
needs_two_cores = pytest.mark.skipif(
    len(TWO_CORES) < 2 or available_cores() < 2, reason="needs two cores"
)

#: Run in a fresh interpreter: a LocalCluster of 2 worker processes x 1 thread through
#: p2p's `dask_client`; each worker's cores and task budget, as JSON.
_LOCAL_CLUSTER = """
import json
from p2p.core.config import DaskConfig
from p2p.core.dask_client import dask_client
from p2p.core.threads import available_cores, task_budget

if __name__ == "__main__":
    with dask_client(DaskConfig(n_workers=2, threads_per_worker=1)) as client:
        seen = []
        for address in client.scheduler_info(n_workers=-1)["workers"]:
            cores = client.submit(available_cores, workers=[address], pure=False)
            budget = client.submit(task_budget, workers=[address], pure=False).result()
            seen.append([cores.result(), budget.slots, budget.torch, budget.gdal])
    print(json.dumps({"parent": available_cores(), "workers": sorted(seen)}))
"""


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without thread or core settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("THREADS") and k != CORES_ENV}
    return env | extra


@needs_two_cores
def test_worker_processes_p2p_starts_divide_the_cores(tmp_path: Path) -> None:
    """Two worker processes x one thread on two cores: each worker may use one core and
    its task computes with one torch and one GDAL thread (each used to count both cores as
    its own: two tasks x two threads on two cores)."""
    script = tmp_path / "cluster.py"
    script.write_text(_LOCAL_CLUSTER)
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_clean_env(),
        preexec_fn=lambda: os.sched_setaffinity(0, TWO_CORES),
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["workers"] == [[1, 1, 1, 1], [1, 1, 1, 1]]  # cores, slots, torch, GDAL
    assert seen["parent"] == 2  # the share is the workers', not the process's that started them


@needs_two_cores
def test_workers_someone_else_started_count_their_host_s_slots(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`dask worker --nworkers 2 --nthreads 1` (here: distributed's own LocalCluster, which
    p2p did not start and which sets no P2P_CORES): a task's slots are the two workers'."""
    monkeypatch.delenv("P2P_THREADS", raising=False)
    monkeypatch.delenv(CORES_ENV, raising=False)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        workers = list(client.scheduler_info(n_workers=-1)["workers"])
        budgets = [client.submit(task_budget, workers=[w], pure=False).result() for w in workers]
    share = max(1, available_cores() // 2)
    assert [(b.slots, b.torch, b.gdal) for b in budgets] == [(2, share, share)] * 2


def test_worker_threads_in_this_process_share_its_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers as threads (``processes=False``, as tiling runs them) share this process's
    cores: two workers x one thread give each task half, and nothing caps the process."""
    monkeypatch.delenv("P2P_THREADS", raising=False)
    monkeypatch.delenv(CORES_ENV, raising=False)
    config = DaskConfig(n_workers=2, threads_per_worker=1)
    with dask_client(config, processes=False) as client:
        workers = list(client.scheduler_info(n_workers=-1)["workers"])
        budgets = [client.submit(task_budget, workers=[w], pure=False).result() for w in workers]
        assert CORES_ENV not in os.environ
    share = max(1, available_cores() // 2)
    assert [(b.slots, b.torch) for b in budgets] == [(2, share)] * 2


@pytest.mark.parametrize(
    ("value", "capped"), [("1", True), ("0", False), ("-2", False), ("two", False), ("²", False)]
)
def test_p2p_cores_caps_a_process_and_a_bad_value_is_ignored(
    monkeypatch: pytest.MonkeyPatch, value: str, capped: bool
) -> None:
    monkeypatch.delenv(CORES_ENV, raising=False)
    cores = available_cores()
    monkeypatch.setenv(CORES_ENV, value)
    assert available_cores() == (1 if capped else cores)
    monkeypatch.setenv(CORES_ENV, str(cores + 5))  # never beyond affinity and quota
    assert available_cores() == cores
