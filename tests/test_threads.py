"""The thread budget: cores from affinity and cgroup quota, shared among what runs at once,
and what p2p processes actually compute with (p2p.core.threads)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from distributed import Client, LocalCluster

from p2p.core.config import DaskConfig, PipelineConfig
from p2p.core.dask_client import local_shape
from p2p.core.threads import (
    CORES_ENV,
    _runnable_at_priority,
    available_cores,
    busy_elsewhere,
    cgroup_quota,
    decide_budget,
    free_cores,
    task_budget,
)
from tests.faultkit import PREDICT_OPTS, cli, write_scene, write_tiny_bundle

ROOT = Path(__file__).resolve().parents[1]
ONE_CORE = sorted(os.sched_getaffinity(0))[:1]


def _in_child(code: str, cores: list[int], **env: str) -> str:
    """Run `code` in a fresh interpreter pinned to `cores`; its last stdout line."""
    clean = {k: v for k, v in os.environ.items() if not k.endswith("THREADS") and k != CORES_ENV}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=clean | env,
        preexec_fn=lambda: os.sched_setaffinity(0, cores),
        timeout=120,
    )
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_a_process_started_with_p2p_cores_budgets_within_it() -> None:
    """``P2P_CORES=1`` (a Dask worker's share, or a user's cap) in a process that may use two
    cores: its budget and torch's threads follow the cap."""
    code = (
        "from p2p.core.threads import use_threads\n"
        "b = use_threads()\n"
        "import torch\n"
        "print(b.cores, b.torch, torch.get_num_threads())"
    )
    two = sorted(os.sched_getaffinity(0))[:2]
    assert _in_child(code, two, **{CORES_ENV: "1"}) == "1 1 1"


def test_a_process_pinned_to_one_core_budgets_one_torch_thread() -> None:
    code = (
        "from p2p.core.threads import available_cores, use_threads\n"
        "b = use_threads()\n"
        "import torch\n"  # loaded after the budget: torch starts with OMP_NUM_THREADS
        "print(available_cores(), b.torch, torch.get_num_threads())"
    )
    assert _in_child(code, ONE_CORE) == "1 1 1"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_torch_loaded_before_the_budget_is_resized_and_a_setting_wins() -> None:
    code = (
        "import torch\n"
        "from p2p.core.threads import use_threads\n"
        "before = torch.get_num_threads(); use_threads(3)\n"
        "import os; print(before, torch.get_num_threads(), os.environ['P2P_THREADS'])"
    )
    assert _in_child(code, sorted(os.sched_getaffinity(0))[:2]) == "2 3 3"


def test_cgroup_v2_quota_caps_the_cores(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_quota(tmp_path) == 1.5
    assert available_cores(tmp_path) == min(2, len(os.sched_getaffinity(0)))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_quota(tmp_path) is None
    assert available_cores(tmp_path) == len(os.sched_getaffinity(0))


def test_cgroup_v1_quota_caps_the_cores(tmp_path: Path) -> None:
    v1 = tmp_path / "cpu,cpuacct"
    v1.mkdir()
    (v1 / "cpu.cfs_quota_us").write_text("50000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_quota(tmp_path) == 0.5
    assert available_cores(tmp_path) == 1
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_quota(tmp_path) is None


def test_cores_are_shared_among_what_runs_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("P2P_THREADS", raising=False)
    assert (decide_budget(slots=3, cores=8).torch, decide_budget(slots=16, cores=8).torch) == (2, 1)
    assert not decide_budget(cores=8).explicit
    assert decide_budget(5, slots=4, cores=8).torch == 5  # a setting is per task
    monkeypatch.setenv("P2P_THREADS", "6")  # what a parent with a setting hands down
    assert decide_budget(slots=4, cores=8).torch == 6


def test_local_cluster_threads_default_to_the_cores() -> None:
    assert local_shape(DaskConfig(), cores=4) == (1, 4)
    assert local_shape(DaskConfig(n_workers=2), cores=5) == (2, 2)
    assert local_shape(DaskConfig(threads_per_worker=1), cores=4) == (4, 1)
    assert local_shape(DaskConfig(n_workers=3, threads_per_worker=2), cores=4) == (3, 2)


def test_a_task_on_a_dask_worker_gets_its_share_of_the_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("P2P_THREADS", raising=False)
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        budget = client.submit(task_budget, pure=False).result()
    assert (budget.slots, budget.torch) == (2, max(1, available_cores() // 2))


def test_threads_setting_is_bounded_and_optional() -> None:
    assert PipelineConfig().threads is None
    assert PipelineConfig(threads=4).threads == 4
    with pytest.raises(ValueError, match="threads"):
        PipelineConfig(threads=0)


def test_p2p_predict_takes_its_threads_from_its_affinity_or_the_option(tmp_path: Path) -> None:
    model = write_tiny_bundle(tmp_path / "model")
    scene = write_scene(tmp_path / "scene.tif")

    def predict(out: str, *extra: str) -> str:
        """The last budget `p2p --debug predict` applied, pinned to one core."""
        args = ["--debug", "predict", "--model", model, "--input", scene, "--output",
                tmp_path / out, *PREDICT_OPTS, *extra]  # fmt: skip
        done = subprocess.run(
            [str(Path(sys.executable).with_name("p2p")), *map(str, args)],
            capture_output=True, text=True, timeout=300, cwd=ROOT,
            env={k: v for k, v in os.environ.items() if not k.endswith("THREADS")},
            preexec_fn=lambda: os.sched_setaffinity(0, ONE_CORE),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        return re.findall(r"threads: (\d+ torch, \d+ GDAL per task \(\w+)", done.stderr)[-1]

    assert predict("auto.tif") == "1 torch, 1 GDAL per task (auto"
    assert predict("set.tif", "--threads", "3") == "3 torch, 3 GDAL per task (setting"
    refused = cli(["predict", "--model", model, "--input", scene, "--output", tmp_path / "x.tif",
                   "--threads", "0"])  # fmt: skip
    assert refused.returncode == 2 and refused.stderr.startswith("error: "), refused.stderr


def test_a_lone_process_leaves_the_cores_other_work_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("P2P_THREADS", raising=False)
    assert free_cores(4, others=0, machine=8) == 4
    assert free_cores(4, others=6, machine=8) == 2
    assert free_cores(2, others=12, machine=2) == 1  # never fewer than one
    (tmp_path / "loadavg").write_text("3.10 2.00 1.50 3/812 4242\n")
    assert busy_elsewhere(samples=2, root=tmp_path) == 2  # the reader itself is not "other"
    lone = decide_budget(others=8)
    assert lone.torch == free_cores(available_cores(), 8)
    assert decide_budget(slots=2, others=8).torch == max(1, available_cores() // 2)
    assert decide_budget(3, others=8).torch == 3  # a setting is never capped


def test_a_quiet_machine_is_read_once_without_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One runnable thread (the reader itself) is the fewest there can be: the budget of every
    task and CLI command does not sleep through the other samples (40 ms) to learn it."""
    (tmp_path / "loadavg").write_text("0.10 0.20 0.30 1/812 4242\n")

    def no_sleep(seconds: float) -> None:
        raise AssertionError(f"slept {seconds} s on a quiet machine")

    monkeypatch.setattr("p2p.core.threads.time.sleep", no_sleep)
    assert busy_elsewhere(samples=5, root=tmp_path) == 0


def _stat(root: Path, pid: int, tid: int, state: str, nice: int) -> None:
    """A /proc/PID/task/TID/stat line as Linux writes it (a comm with spaces and brackets)."""
    fields = [state, "1", str(pid), str(pid), "0", "-1", "4194560", *["0"] * 8, "20", str(nice)]
    folder = root / str(pid) / "task" / str(tid)
    folder.mkdir(parents=True)
    (folder / "stat").write_text(f"{tid} (python (x) y) {' '.join(fields)} 1 0 0\n")


def test_work_at_a_lower_priority_leaves_its_cores_to_a_lone_process(tmp_path: Path) -> None:
    """Runnable threads count as busy only at this process's priority or above: a niced
    background job yields its cores (the cap read /proc/loadavg alone and counted it)."""
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    me = os.getpid()
    (tmp_path / str(me)).mkdir()
    (tmp_path / str(me) / "stat").write_text("x")
    _stat(tmp_path, me, me, "R", mine)  # this process: never "other"
    _stat(tmp_path, 101, 101, "R", mine)  # busy at our priority
    _stat(tmp_path, 101, 102, "R", mine - 1)  # ... and above
    _stat(tmp_path, 101, 103, "S", mine)  # asleep
    _stat(tmp_path, 202, 202, "R", mine + 5)  # niced background work
    (tmp_path / "loadavg").write_text("4.00 4.00 4.00 5/300 999\n")
    assert _runnable_at_priority(tmp_path) == 2
    assert busy_elsewhere(samples=2, root=tmp_path) == 2  # loadavg alone said 4
    assert _runnable_at_priority(tmp_path / "elsewhere") is None  # not a /proc: loadavg rules


def test_the_scan_reads_the_real_proc_and_sees_a_busy_process() -> None:
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert max(_runnable_at_priority(Path("/proc")) or 0 for _ in range(20)) >= 1
    finally:
        spin.kill()
        spin.wait()
