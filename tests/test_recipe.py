"""A pipeline is one declaration: check → steps → delivery → record, for every runner.

A small stage made here (one module's worth of code: name, version, key parts, run) joined to
a pipeline by one step is enough for `run_pipeline`, the plan and the record schema; the
Prefect task table is derived from the declared stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from p2p.core.cache import KeyParts, StageRecord, run_stage
from p2p.core.errors import InputError
from p2p.stages.pipeline import PIPELINES, Call, Pipeline, Records, Step, in_process, run_pipeline
from p2p.stages.pipeline import stages as declared_stages
from p2p.stages.plan import plan
from p2p.stages.record import RunRecord
from p2p.stages.stage import Stage

NAME, VERSION = "double", 1


def key_parts(value: int) -> KeyParts:
    return KeyParts(NAME, VERSION, {"value": value}, [])


def run(workspace: str | Path, value: int) -> StageRecord:
    def build(folder: Path) -> dict[str, Any]:
        (folder / "out.txt").write_text(str(2 * value))
        return {"output": str(folder / "out.txt")}

    return run_stage(workspace, key_parts(value), build)


STAGE = Stage(NAME, VERSION, key_parts, run, task="double-value")


@dataclass(frozen=True)
class Job:
    workspace: str
    values: list[int]
    output: str


def _calls(j: Job, _: Records) -> list[Call]:
    return [(f"{NAME}:{v}", {"value": v}) for v in j.values]


def _check(j: Job) -> None:
    if any(v < 0 for v in j.values):
        raise InputError("values", "must not be negative")


def _deliver(j: Job, r: Records) -> bool:
    total = sum(int(Path(rec.summary["output"]).read_text()) for rec in r.values())
    Path(j.output).write_text(str(total))
    return True


def _fields(j: Job, _: Records) -> dict[str, Any]:
    scenes = [str(v) for v in j.values]
    return {"model": None, "output": j.output, "scenes": scenes, "metrics": {}}


DOUBLING = Pipeline(
    "predict", (Step(STAGE, _calls, per_scene=True),), _check, _fields, deliver=_deliver
)


def test_a_declared_pipeline_checks_runs_delivers_and_records(tmp_path: Path) -> None:
    job = Job(str(tmp_path / "ws"), [1, 2, 3], str(tmp_path / "sum.txt"))
    record = run_pipeline(DOUBLING, job, in_process())
    assert Path(job.output).read_text() == "12"
    assert RunRecord.model_validate(record).written is True
    assert list(record["stages"]) == ["double:1", "double:2", "double:3"]
    assert not any(s["cached"] for s in record["stages"].values())
    again = run_pipeline(DOUBLING, job, in_process())
    assert all(s["cached"] for s in again["stages"].values())
    assert [e.status for e in plan(DOUBLING, job, job.workspace)] == ["cached"] * 3


def test_the_check_runs_before_any_stage(tmp_path: Path) -> None:
    job = Job(str(tmp_path / "ws"), [1, -1], str(tmp_path / "sum.txt"))
    with pytest.raises(InputError, match="must not be negative"):
        run_pipeline(DOUBLING, job, in_process())
    assert not (tmp_path / "ws").exists() and not Path(job.output).exists()


def test_every_declared_stage_has_one_prefect_task() -> None:
    from tasks.stages import TASKS

    stages = list(declared_stages())
    assert {s.name for s in stages} == set(TASKS)
    assert {s.name: s.task for s in stages} == {n: t.name for n, t in TASKS.items()}
    assert {p.name for p in PIPELINES} == {"train", "predict", "demo"}
