"""The pipelines, each declared once: its steps, its check, its delivery and its record.

A `Pipeline` is one value (as a Raster Vision pipeline is): the steps in order (a step names its
stage, turns the job and the records of earlier steps into the stage's calls, and says whether
it fans out once per scene, like Raster Vision's split commands), the check run before any work
(every scene, the model), the delivery of its product, and what its record says. `run_pipeline`
runs any pipeline with any runner beneath it: `in_process` calls the stages here (the CLI's
`predict`, the Python API), `p2p.stages.plan` only computes keys and reads manifests (`p2p
plan`, the fully cached `p2p run`, `--force`), and `tasks.stages.run_on_prefect` submits them as
Prefect tasks (the flows, on a Dask cluster when one is configured). So the CLI, the flows and
the plan check the same way, cannot disagree on a key, deliver the same way and return the
same record (`p2p.stages.record.RunRecord`). The Prefect task table is derived from the stages
these declarations list.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from p2p.core import storage, transfer
from p2p.core.cache import StageRecord
from p2p.core.config import (
    ExportTilesConfig,
    MosaicConfig,
    PipelineConfig,
    PredictConfig,
    SceneConfig,
    TrainingScene,
)
from p2p.stages import dataset, evaluate, import_tiles, mosaic, predict, report, tile, train
from p2p.stages.record import RunRecord, stage_entry
from p2p.stages.stage import Progress, Stage

#: label → record, in run order. Labels: the stage name, or ``stage:scene_id`` per scene.
Records = dict[str, StageRecord]
Call = tuple[str, dict[str, Any]]
#: (stage, workspace, calls) → one record per call, in order.
Runner = Callable[[Stage, str, Sequence[Call]], list[StageRecord]]
#: (name, action, retries) → the action's result: how a runner runs a pipeline's check and
#: delivery (in process: a plain call; on Prefect: a task, retried on I/O failures).
Action = Callable[[str, Callable[[], Any], int], Any]


@dataclass(frozen=True)
class Step:
    """One stage of a pipeline and how its calls are made from the job and earlier records;
    `per_scene` marks a step that fans out into one call per scene (split across workers)."""

    stage: Stage
    calls: Callable[[Any, Records], list[Call]]
    per_scene: bool = False


@dataclass(frozen=True)
class PredictionJob:
    """A checked batch prediction: scenes expanded, paths resolved.

    Attributes:
        workspace: Folder of the cached predict and mosaic stages.
        model: Model bundle folder.
        scenes: The source scenes.
        predict: Inference settings; `output_format` applies to the mosaic.
        mosaic: Output grid.
        output: Where the mosaic is delivered (a path or ``s3://`` URL).
    """

    workspace: str
    model: str
    scenes: list[SceneConfig]
    predict: PredictConfig
    mosaic: MosaicConfig
    output: str

    @property
    def per_scene(self) -> PredictConfig:
        """Scene predictions are intermediate: plain tiled GeoTIFFs, the mosaic is the product."""
        return self.predict.model_copy(update={"output_format": "gtiff"})


def scene_label(scene: TrainingScene) -> str:
    """The record label of a training scene's tile or import stage."""
    stage = import_tiles.NAME if isinstance(scene, ExportTilesConfig) else tile.NAME
    return f"{stage}:{scene.scene_id}"


def _imports(c: PipelineConfig, _: Records) -> list[Call]:
    return [
        (scene_label(s), {"scene": s, "tiling": c.tiling})
        for s in c.scenes
        if isinstance(s, ExportTilesConfig)
    ]


def _tiles(c: PipelineConfig, _: Records) -> list[Call]:
    return [
        (scene_label(s), {"scene": s, "tiling": c.tiling, "dask": c.dask})
        for s in c.scenes
        if isinstance(s, SceneConfig)
    ]


def _dataset(c: PipelineConfig, r: Records) -> list[Call]:
    tiles = [r[scene_label(s)] for s in c.scenes]
    return [(dataset.NAME, {"tiles": tiles, "config": c.dataset, "tiling": c.tiling})]


def _train(c: PipelineConfig, r: Records) -> list[Call]:
    return [(train.NAME, {"dataset": r[dataset.NAME], "model": c.model, "train": c.train})]


def _evaluate(c: PipelineConfig, r: Records) -> list[Call]:
    arguments = {
        "train": r[train.NAME],
        "dataset": r[dataset.NAME],
        "predict": c.predict,
        "evaluate": c.evaluate,
    }
    return [(evaluate.NAME, arguments)]


def _predictions(j: PredictionJob, _: Records) -> list[Call]:
    return [
        (f"{predict.NAME}:{s.scene_id}", {"model": j.model, "scene": s, "config": j.per_scene})
        for s in j.scenes
    ]


def _mosaic(j: PredictionJob, r: Records) -> list[Call]:
    outputs = [r[f"{predict.NAME}:{s.scene_id}"].summary["output"] for s in j.scenes]
    arguments = {
        "predictions": outputs,
        "config": j.mosaic,
        "output_format": j.predict.output_format,
        "compress": j.predict.compress,
        "uncertainty": [uncertainty_output(o) for o in outputs] if j.predict.uncertainty else None,
    }
    return [(mosaic.NAME, arguments)]


def uncertainty_output(output: str) -> str:
    """Where the uncertainty raster of a prediction or mosaic at `output` (a path or ``s3://``
    URL) lies: ``NAME.uncertainty.tif`` beside it (`p2p.infer.inference.uncertainty_path`)."""
    stem, dot, suffix = output.rpartition(".")
    return f"{stem}.uncertainty.{suffix}" if dot and "/" not in suffix else f"{output}.uncertainty"


@dataclass(frozen=True)
class ReportJob:
    """The demo's last step: a mosaic scored against the references over its extent."""

    workspace: str
    mosaic: str
    source: str
    target: str


def _report(j: ReportJob, _: Records) -> list[Call]:
    arguments = {"mosaic": j.mosaic, "source": j.source, "target": j.target}
    return [(report.NAME, arguments)]


def check_training(config: PipelineConfig) -> None:
    """Every training scene (files, bands, grids, overlap, chip size) before any work, so bad
    input costs a second and one line, not a Prefect start-up and a failed task."""
    from p2p.data.arcgis import plan_export
    from p2p.data.tiling import plan_scene

    for scene in config.scenes:
        if isinstance(scene, ExportTilesConfig):
            plan_export(scene.export_tiles, config.tiling)
        else:
            plan_scene(scene, config.tiling)


def check_prediction(job: PredictionJob) -> None:
    """The bundle's metadata and every scene against it (bands, window, runtime), and the
    scenes' CRSs against the mosaic (`p2p.infer.mosaic.check_crs`)."""
    from p2p.infer.inference import check_scene
    from p2p.infer.mosaic import check_crs
    from p2p.model.meta import read_ref

    ref = read_ref(job.model)  # the predict stage checks the weights; torch loads where one runs
    grids = [check_scene(ref, scene, job.per_scene) for scene in job.scenes]
    check_crs([(s.source[0], g.crs) for s, g in zip(job.scenes, grids, strict=True)], job.mosaic)


def deliver_mosaic(job: PredictionJob, records: Records) -> bool:
    """Copy the mosaic to the job's output (atomically; left as is when unchanged), and its
    uncertainty mosaic, where one was made, beside it (`uncertainty_output`).

    Returns:
        True when the output or its uncertainty raster was (re)written.
    """
    from p2p.infer.report import deliver_file

    summary = records[mosaic.NAME].summary
    written = deliver_file(summary["output"], job.output)
    if summary.get("uncertainty"):
        written = deliver_file(summary["uncertainty"], uncertainty_output(job.output)) or written
    return written


def _training_fields(c: PipelineConfig, r: Records) -> dict[str, Any]:
    last = r.get(evaluate.NAME) or r.get(train.NAME)
    return {
        "model": r[train.NAME].summary["model"] if train.NAME in r else None,
        "output": None,
        "scenes": [s.scene_id for s in c.scenes],
        "metrics": last.summary.get("metrics", {}) if last else {},
    }


def _prediction_fields(j: PredictionJob, _: Records) -> dict[str, Any]:
    output = j.output if storage.is_remote(j.output) else str(Path(j.output).absolute())
    scenes = [s.scene_id for s in j.scenes]
    spread = uncertainty_output(output) if j.predict.uncertainty else None
    return {
        "model": j.model,
        "output": output,
        "uncertainty": spread,
        "scenes": scenes,
        "metrics": {},
    }


def _report_fields(j: ReportJob, r: Records) -> dict[str, Any]:
    return {
        "model": None,
        "output": None,
        "scenes": [],
        "metrics": r[report.NAME].summary["metrics"],
        "report": str(Path(j.workspace) / "report.png"),
    }


@dataclass(frozen=True)
class Pipeline:
    """A pipeline, declared once.

    Attributes:
        name: The record's ``pipeline`` field.
        steps: The stages in run order.
        check: Job → None; raises a `P2PError` on bad input, before any stage runs.
        fields: (job, records) → the record's model, output, scenes and metrics.
        deliver: (job, records) → whether the product was (re)written; None: nothing to deliver.
        until: Steps a run may stop after (`p2p run --until`).
    """

    name: Literal["train", "predict", "demo"]
    steps: tuple[Step, ...]
    check: Callable[[Any], None]
    fields: Callable[[Any, Records], dict[str, Any]]
    deliver: Callable[[Any, Records], bool] | None = None
    until: tuple[str, ...] = ()


#: Scene pairs and Export Tiles folders → chips → dataset → model bundle → its metrics.
TRAINING = Pipeline(
    "train",
    (
        Step(import_tiles.STAGE, _imports, per_scene=True),
        Step(tile.STAGE, _tiles, per_scene=True),
        Step(dataset.STAGE, _dataset),
        Step(train.STAGE, _train),
        Step(evaluate.STAGE, _evaluate),
    ),
    check=check_training,
    fields=_training_fields,
    until=(tile.NAME, dataset.NAME, train.NAME, evaluate.NAME),  # import counts as tile
)
#: Where `p2p run --until` may stop.
UNTIL = TRAINING.until

#: Scenes → one prediction each → one mosaic, delivered (`p2p predict`, `batch_predict`).
PREDICTION = Pipeline(
    "predict",
    (
        Step(predict.STAGE, _predictions, per_scene=True),
        Step(mosaic.STAGE, _mosaic),
    ),
    check=check_prediction,
    fields=_prediction_fields,
    deliver=deliver_mosaic,
)

#: The demo's held-out mosaic against its map (the demo flow's last step).
DEMO_REPORT = Pipeline(
    "demo", (Step(report.STAGE, _report),), check=lambda _: None, fields=_report_fields
)

PIPELINES = (TRAINING, PREDICTION, DEMO_REPORT)


def stages() -> Iterator[Stage]:
    """Every stage the pipelines declare, once each (the Prefect task table is made of these)."""
    seen: set[str] = set()
    for pipeline in PIPELINES:
        for step in pipeline.steps:
            if step.stage.name not in seen:
                seen.add(step.stage.name)
                yield step.stage


def run_steps(
    pipeline: Pipeline, job: Any, workspace: str, runner: Runner, until: str | None = None
) -> Records:
    """Run a pipeline's steps in order with `runner`; stop after step `until` when given."""
    records: Records = {}
    for step in pipeline.steps:
        calls = step.calls(job, records)
        if calls:
            done = runner(step.stage, workspace, calls)
            records.update(zip([label for label, _ in calls], done, strict=True))
        if step.stage.name == until:
            break
    return records


def direct(_name: str, action: Callable[[], Any], _retries: int) -> Any:
    """The in-process `Action`: call it."""
    return action()


def run_pipeline(
    pipeline: Pipeline,
    job: Any,
    runner: Runner,
    action: Action = direct,
    until: str | None = None,
) -> dict[str, Any]:
    """Check, run every step, deliver and record: the one way a pipeline runs.

    Args:
        pipeline: The declaration.
        job: Its checked configuration (`PipelineConfig`, `PredictionJob`, `ReportJob`).
        runner: How stages run (in process, on Prefect, on Prefect on Dask).
        action: How the check and the delivery run (in process: called; Prefect: tasks).
        until: Stop after this step (training); nothing is delivered then.

    Returns:
        The run record (`RunRecord`, as a dict).
    """
    start = time.perf_counter()
    action(f"check-{pipeline.name}", partial(pipeline.check, job), 0)
    records = run_steps(pipeline, job, job.workspace, runner, until)
    written = None
    if pipeline.deliver is not None and until is None:
        written = action(f"deliver-{pipeline.name}", partial(pipeline.deliver, job, records), 2)
    return pipeline_record(pipeline, job, records, written, time.perf_counter() - start)


def pipeline_record(
    pipeline: Pipeline,
    job: Any,
    records: Mapping[str, StageRecord],
    written: bool | None = None,
    seconds: float = 0.0,
) -> dict[str, Any]:
    """The `RunRecord` (as a dict) of a pipeline's job and the records of its stage calls."""
    fields = pipeline.fields(job, dict(records))
    record = {
        "pipeline": pipeline.name,
        "workspace": job.workspace,
        "written": written,
        "stages": {label: stage_entry(r) for label, r in records.items()},
        "seconds": round(seconds, 3),
        **fields,
    }
    return RunRecord.model_validate(record).model_dump()


def in_process(progress: Callable[[str], Progress | None] | None = None) -> Runner:
    """A runner that calls the stages here, one call after another.

    Args:
        progress: Given a call's label, returns its progress callback (or None).
    """

    def run(stage: Stage, workspace: str, calls: Sequence[Call]) -> list[StageRecord]:
        return [
            stage.run_watched(
                label, {"workspace": workspace, **arguments}, progress(label) if progress else None
            )
            for label, arguments in calls
        ]

    return run


def default_workspace(output: str | Path) -> Path:
    """Where `p2p predict` caches its stages unless told: a hidden folder beside the output
    (for an ``s3://`` output, a local folder named after it, so a rerun resumes there)."""
    if storage.is_remote(output):
        return transfer.staging_dir(str(output)) / ".p2p-work"
    return Path(output).absolute().parent / ".p2p-work"
