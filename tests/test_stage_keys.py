"""Every setting a stage reads is in its key (issue 19 item 3).

The fields a stage reads are found by instrumenting the config classes during a real run of
both pipelines on tiny demo scenes: every attribute read of a config field, while a stage
runs, is recorded against that stage (whichever object of the class it is read from, so copies
such as ``PredictionJob.per_scene`` count too). Then, for each stage and each field it read,
the field is changed in the job and `p2p plan` must mark the stage to rerun, unless the field
is listed in `NOT_IN_KEY` with the reason; a listed field must leave the stage cached. A new
read of a setting that the key forgets fails here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest

from p2p.core.cache import StageRecord
from p2p.core.config import MosaicConfig, PipelineConfig
from p2p.core.roots import checked_pipeline_config
from p2p.core.scenes import FrozenConfig
from p2p.demo import write_demo_scenes
from p2p.demo.scenes import demo_config
from p2p.stages.pipeline import PREDICTION, TRAINING, Call, PredictionJob, in_process, run_steps
from p2p.stages.plan import plan
from p2p.stages.stage import Stage

#: (stage, "Class.field") → why changing the field must not change the stage's key.
NOT_IN_KEY: dict[tuple[str, str], str] = {
    ("tile", "DaskConfig.address"): "where blocks are tiled, not what: the chips are the same",
    ("tile", "DaskConfig.n_workers"): "where blocks are tiled, not what: the chips are the same",
    ("tile", "DaskConfig.threads_per_worker"): "where blocks are tiled: the chips are the same",
    ("tile", "TilingConfig.compression"): "bytes on disk, never chip values; a store tiled "
    "with either codec serves both",
    ("tile", "TilingConfig.min_valid_fraction"): "only filters chips in the dataset stage, "
    "whose key holds it",
    ("train", "TrainConfig.num_workers"): "loader processes change speed, not weights",
    ("train", "TrainConfig.device"): "the device changes speed, not the weights a run "
    "converges to (CPU runs are exact; the train key documents this)",
    ("evaluate", "PredictConfig.runtime"): "evaluate always runs the torch runtime (a fresh "
    "bundle has no ONNX export), whatever predict.runtime says",
    ("predict", "PredictConfig.output_format"): "scene predictions are intermediate, always "
    "plain tiled GeoTIFFs (PredictionJob.per_scene); the mosaic stage keys the format",
}


def _copy_files(paths: Sequence[str], into: Path) -> list[str]:
    into.mkdir(parents=True, exist_ok=True)
    return [str(shutil.copy(p, into / Path(p).name)) for p in paths]


#: "Class.field" → (its value, a scratch folder) → another valid value, where the generic
#: rule (flip a bool, another Literal choice, +1 for an int, half a float) does not fit.
ALTERNATIVES: dict[str, Callable[[Any, Path], Any]] = {
    "SceneConfig.source": lambda v, tmp: _copy_files(v, tmp / "source"),
    "SceneConfig.target": lambda v, tmp: _copy_files(v, tmp / "target"),
    "SceneConfig.source_bands": lambda v, tmp: [1] if v is None else None,
    "SceneConfig.target_bands": lambda v, tmp: [1] if v is None else None,
    "SceneConfig.nodata": lambda v, tmp: -9999.0 if v is None else None,
    "SceneConfig.name": lambda v, tmp: "renamed",
    "TrainConfig.devices": lambda v, tmp: 2,
    "PredictConfig.tile_size": lambda v, tmp: 48 if v is None else None,
    "PredictConfig.overlap": lambda v, tmp: 2 if v is None else None,
    "PredictConfig.nodata": lambda v, tmp: -1.0 if v is None else None,
    "MosaicConfig.crs": lambda v, tmp: "EPSG:3857" if v is None else None,
    "MosaicConfig.resolution": lambda v, tmp: 3.0 if v is None else None,
    "DaskConfig.address": lambda v, tmp: "tcp://127.0.0.1:1" if v is None else None,
    "DaskConfig.n_workers": lambda v, tmp: 3,
    "DaskConfig.threads_per_worker": lambda v, tmp: 3,
    "TrainConfig.rendezvous": lambda v, tmp: "127.0.0.1:29400",
    "EvaluateConfig.indices": lambda v, tmp: [] if v else ["nd=1,2"],
}
#: Fields that can only change together with another (nodes > 1 needs a rendezvous).
TOGETHER = {
    "TrainConfig.nodes": {"nodes": 2, "rendezvous": "127.0.0.1:29400"},
    "PredictConfig.samples": {"samples": 1, "uncertainty": True},  # samples need uncertainty
}


@contextlib.contextmanager
def _recording(reads: set[str]) -> Iterator[None]:
    """Record ``Class.field`` for every config field read while the block runs (any thread)."""

    def spy(self: Any, name: str) -> Any:
        cls = type(self)
        if name in cls.model_fields:
            reads.add(f"{cls.__name__}.{name}")
        return object.__getattribute__(self, name)

    FrozenConfig.__getattribute__ = spy  # type: ignore[method-assign]
    try:
        yield
    finally:
        del FrozenConfig.__getattribute__


def _configs(arguments: dict[str, Any]) -> set[type]:
    values = [v for a in arguments.values() for v in (a if isinstance(a, list) else [a])]
    return {type(v) for v in values if isinstance(v, FrozenConfig)}


@dataclasses.dataclass
class Run:
    """What a stage read while it ran, and the config classes its calls were given."""

    reads: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    classes: dict[str, set[type]] = dataclasses.field(default_factory=dict)

    def runner(self) -> Callable[[Stage, str, Sequence[Call]], list[StageRecord]]:
        inner = in_process()

        def run(stage: Stage, workspace: str, calls: Sequence[Call]) -> list[StageRecord]:
            seen = self.reads.setdefault(stage.name, set())
            self.classes.setdefault(stage.name, set()).update(
                c for _, arguments in calls for c in _configs(arguments)
            )
            with _recording(seen):
                return inner(stage, workspace, calls)

        return run

    def fields(self, stage: str) -> list[str]:
        """The fields of the stage's own config arguments that it read, sorted."""
        names = {c.__name__ for c in self.classes[stage]}
        return sorted(f for f in self.reads[stage] if f.split(".")[0] in names)


def _other(cls: type[FrozenConfig], name: str, value: Any, tmp: Path) -> Any:
    """Another valid value of a field (see `ALTERNATIVES`)."""
    special = ALTERNATIVES.get(f"{cls.__name__}.{name}")
    if special is not None:
        return special(value, tmp)
    annotation = cls.model_fields[name].annotation
    choices = [c for a in (annotation, *get_args(annotation)) for c in _literal(a)]
    if isinstance(value, bool):
        return not value
    if choices:
        return next(c for c in choices if c != value)
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value else 0.25
    raise AssertionError(f"no alternative value for {cls.__name__}.{name}={value!r}")


def _literal(annotation: Any) -> tuple[Any, ...]:
    return get_args(annotation) if get_origin(annotation) is Literal else ()


def _changed(obj: FrozenConfig, field: str, tmp: Path) -> FrozenConfig:
    cls = type(obj)
    update = TOGETHER.get(f"{cls.__name__}.{field}") or {
        field: _other(cls, field, getattr(obj, field), tmp)
    }
    return cls.model_validate(obj.model_dump() | update)


def _mutate(job: Any, field: str, tmp: Path) -> Any:
    """The job with `field` (``Class.field``) changed in every config object of that class."""
    cls_name, name = field.split(".")

    def swap(value: Any) -> Any:
        if isinstance(value, list):
            return [swap(v) for v in value]
        if isinstance(value, FrozenConfig) and type(value).__name__ == cls_name:
            return _changed(value, name, tmp)
        return value

    if isinstance(job, PipelineConfig):
        return job.model_copy(update={k: swap(getattr(job, k)) for k in type(job).model_fields})
    return dataclasses.replace(
        job, **{f.name: swap(getattr(job, f.name)) for f in dataclasses.fields(job)}
    )


def _status(steps: Any, job: Any, workspace: str, stage: str) -> list[str]:
    return [e.status for e in plan(steps, job, workspace, stage) if e.record.stage == stage]


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, PipelineConfig, Any]:
    """Both pipelines run once on tiny scenes, instrumented."""
    root = tmp_path_factory.mktemp("keys")
    data = write_demo_scenes(root / "scenes", scene_size=96)
    cfg = checked_pipeline_config(demo_config(root / "ws", data.train[:1], quick=True))
    recorded = Run()
    records = run_steps(TRAINING, cfg, cfg.workspace, recorded.runner())
    job = PredictionJob(
        str(root / "pws"),
        records["train"].summary["model"],
        list(data.held_out[:1]),
        cfg.predict,
        MosaicConfig(),
        str(root / "mosaic.tif"),
    )
    run_steps(PREDICTION, job, job.workspace, recorded.runner())
    return recorded, cfg, job


def test_every_setting_a_stage_reads_is_in_its_key(
    pipelines: tuple[Run, PipelineConfig, Any], tmp_path: Path
) -> None:
    recorded, cfg, job = pipelines
    jobs = {s.stage.name: (TRAINING, cfg) for s in TRAINING.steps} | {
        s.stage.name: (PREDICTION, job) for s in PREDICTION.steps
    }
    assert {"tile", "dataset", "train", "evaluate", "predict", "mosaic"} <= set(recorded.reads)
    assert "evaluate" in recorded.reads and "PredictConfig.nodata" in recorded.fields("evaluate")
    stale, wrongly_listed = [], []
    for stage, fields in sorted((s, recorded.fields(s)) for s in recorded.reads):
        steps, base = jobs[stage]
        assert set(_status(steps, base, base.workspace, stage)) == {"cached"}
        for n, field in enumerate(fields):
            changed = _mutate(base, field, tmp_path / f"{stage}{n}")
            statuses = set(_status(steps, changed, base.workspace, stage))
            if (stage, field) in NOT_IN_KEY:
                if statuses != {"cached"}:
                    wrongly_listed.append(f"{stage}: {field}")
            elif "cached" in statuses:
                stale.append(f"{stage}: {field}")
    assert stale == [], "read by the stage but missing from its key"
    assert wrongly_listed == [], "listed as not in the key, but changes it"


def test_every_listed_exception_is_read(pipelines: tuple[Run, PipelineConfig, Any]) -> None:
    """A listed field the stage no longer reads is a stale entry (its reason may be wrong)."""
    recorded, _, _ = pipelines
    unread = [key for key in NOT_IN_KEY if key[1] not in recorded.fields(key[0])]
    assert unread == []
