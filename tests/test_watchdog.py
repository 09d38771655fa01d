"""A flow never hangs forever (issue 19 item 9): Dask clusters safe from the CPython 3.11
``sys._current_frames`` deadlock, and a stall watchdog on every stage."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import dask
import pytest
from distributed import Client, LocalCluster
from pydantic import ValidationError

from p2p.core.cache import KeyParts, StageRecord, run_stage
from p2p.core.config import DaskConfig, PipelineConfig
from p2p.core.dask_client import FRAMES_DEADLOCK, dask_client
from p2p.stages.pipeline import Pipeline, Step, in_process, run_steps
from p2p.stages.stage import Progress, Stage
from p2p.stages.watch import Interrupted, Stalled, clear_interrupt, interrupt, stall_after


def _profiling(dask_worker: Any) -> bool:
    """Whether a worker's statistical profiler (which calls sys._current_frames) runs."""
    callback = dask_worker.periodic_callbacks.get("profile")
    return callback is not None and callback.is_running()


@pytest.mark.skipif(not FRAMES_DEADLOCK, reason="the interpreter has no frames deadlock")
@pytest.mark.parametrize("processes", [False, True])
def test_clusters_p2p_starts_run_no_profiler(processes: bool) -> None:
    config = DaskConfig(n_workers=1, threads_per_worker=1)
    with dask_client(config, processes=processes) as client:
        assert client.run(_profiling) and not any(client.run(_profiling).values())


@pytest.mark.skipif(not FRAMES_DEADLOCK, reason="the interpreter has no frames deadlock")
def test_workers_p2p_joins_stop_their_profiler() -> None:
    # a cluster someone else started, with Dask's default profiler on (said explicitly: a
    # full run's earlier tests must not decide it), which p2p then joins
    with (
        dask.config.set({"distributed.worker.profile.enabled": True}),
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as own,
    ):
        deadline = time.monotonic() + 10
        while not all(own.run(_profiling).values()) and time.monotonic() < deadline:
            time.sleep(0.1)  # the worker starts its periodic callbacks once it runs
        assert all(own.run(_profiling).values())  # Dask's default: profiling every 10 ms
        with dask_client(DaskConfig(address=cluster.scheduler_address)):
            pass
        assert not any(own.run(_profiling).values())


class _Stall:
    """A stage whose progress stops after two of five blocks until `release` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.finished = threading.Event()

    def run(self, workspace: str, name: str, progress: Progress | None = None) -> StageRecord:
        def build(folder: Path) -> dict[str, Any]:
            for done in (1, 2):
                assert progress is not None
                progress(done, 5)
            self.release.wait(30)
            assert progress is not None
            progress(3, 5)  # a stage the watchdog gave up on stops at its next report
            self.finished.set()
            return {}

        return run_stage(workspace, _parts(name), build)


def _parts(name: str) -> KeyParts:
    return KeyParts("stall", 1, {"name": name}, [])


def _steps(stalling: _Stall) -> Pipeline:
    stage = Stage("stall", 1, _parts, stalling.run, task="stall", unit="blocks")
    step = Step(stage, lambda job, _: [("stall:scene_a", {"name": job})])
    return Pipeline("demo", (step,), check=lambda _: None, fields=lambda *_: {})


def test_a_stalled_stage_fails_in_one_line_naming_it(tmp_path: Path) -> None:
    stalling = _Stall()
    start = time.monotonic()
    with stall_after(1.0), pytest.raises(Stalled) as failed:
        run_steps(_steps(stalling), "a", str(tmp_path), in_process())
    assert 1.0 <= time.monotonic() - start < 10
    message = str(failed.value)
    assert message == (
        "stall:scene_a: stalled: no progress for 1 s at 2 of 5 blocks (the watchdog_s setting)"
    )
    stalling.release.set()
    time.sleep(0.5)
    assert not stalling.finished.is_set()  # its late report raised: it did not go on
    assert not (tmp_path / "stall" / _parts("a").key / "manifest.json").exists()


def test_progress_keeps_a_slow_stage_alive(tmp_path: Path) -> None:
    class Slow(_Stall):
        def run(self, workspace: str, name: str, progress: Progress | None = None) -> StageRecord:
            def build(folder: Path) -> dict[str, Any]:
                for done in range(1, 6):
                    time.sleep(0.3)
                    assert progress is not None
                    progress(done, 5)
                return {}

            return run_stage(workspace, _parts(name), build)

    with stall_after(1.0):
        records = run_steps(_steps(Slow()), "b", str(tmp_path), in_process())
    assert not records["stall:scene_a"].cached  # 1.5 s in all, never 1 s without a report


def test_an_interrupt_stops_a_stage_at_its_next_report(tmp_path: Path) -> None:
    stalling = _Stall()
    threading.Timer(0.5, interrupt).start()
    threading.Timer(0.7, stalling.release.set).start()
    try:
        with pytest.raises(Interrupted) as stopped:
            run_steps(_steps(stalling), "c", str(tmp_path), in_process())
    finally:
        clear_interrupt()
    assert stopped.value.line() == (
        "interrupted in stall:scene_a (2 of 5 blocks); rerun the same command to resume"
    )
    assert not stalling.finished.is_set()


def test_watchdog_setting_is_bounded() -> None:
    assert PipelineConfig().watchdog_s == 1800
    assert PipelineConfig(watchdog_s=0).watchdog_s == 0  # off
    for bad in (-1, float("inf"), float("nan"), 10**9):
        with pytest.raises(ValidationError, match="watchdog_s"):
            PipelineConfig(watchdog_s=bad)
