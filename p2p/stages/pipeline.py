"""The pipelines, declared once: which stages run, in which order, on which arguments.

A pipeline is a tuple of `Step`s. A step names its stage and turns the job (a checked config)
and the records of earlier steps into the stage's calls, ``(label, arguments)``. Runners are
swappable beneath one declaration (as in Raster Vision's pipelines): `in_process` calls the
stages here (the CLI's `predict`), `p2p.stages.plan` only computes keys and reads manifests
(`p2p plan`, the fully cached `p2p run`, `--force`), and `tasks.stages.run_on_prefect` submits
them as Prefect tasks (the flows). So the flows, the plan and the CLI cannot disagree on a key.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2p.core import storage
from p2p.core.cache import StageRecord
from p2p.core.config import (
    ExportTilesConfig,
    MosaicConfig,
    PipelineConfig,
    PredictConfig,
    SceneConfig,
    TrainingScene,
)
from p2p.stages import dataset, evaluate, import_tiles, mosaic, predict, tile, train
from p2p.stages.stage import Progress, Stage

#: label → record, in run order. Labels: the stage name, or ``stage:scene_id`` per scene.
Records = dict[str, StageRecord]
Call = tuple[str, dict[str, Any]]
#: (stage, workspace, calls) → one record per call, in order.
Runner = Callable[[Stage, str, Sequence[Call]], list[StageRecord]]


@dataclass(frozen=True)
class Step:
    """One stage of a pipeline and how its calls are made from the job and earlier records."""

    stage: Stage
    calls: Callable[[Any, Records], list[Call]]


@dataclass(frozen=True)
class PredictionJob:
    """A checked batch prediction: scenes expanded, paths resolved.

    Attributes:
        workspace: Folder of the cached predict and mosaic stages.
        model: Model bundle folder.
        scenes: The source scenes.
        predict: Inference settings; `output_format` applies to the mosaic.
        mosaic: Output grid.
    """

    workspace: str
    model: str
    scenes: list[SceneConfig]
    predict: PredictConfig
    mosaic: MosaicConfig

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
    arguments = {"train": r[train.NAME], "dataset": r[dataset.NAME], "predict": c.predict}
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
    }
    return [(mosaic.NAME, arguments)]


#: Scene pairs and Export Tiles folders → chips → dataset → model bundle → its metrics.
TRAINING: tuple[Step, ...] = (
    Step(import_tiles.STAGE, _imports),
    Step(tile.STAGE, _tiles),
    Step(dataset.STAGE, _dataset),
    Step(train.STAGE, _train),
    Step(evaluate.STAGE, _evaluate),
)
#: Where `p2p run --until` may stop (the import stage counts as part of `tile`).
UNTIL = (tile.NAME, dataset.NAME, train.NAME, evaluate.NAME)

#: Scenes → one prediction each → one mosaic (`p2p predict` and the `batch_predict` flow).
PREDICTION: tuple[Step, ...] = (
    Step(predict.STAGE, _predictions),
    Step(mosaic.STAGE, _mosaic),
)


def run_steps(
    steps: Sequence[Step], job: Any, workspace: str, runner: Runner, until: str | None = None
) -> Records:
    """Run a pipeline's steps in order with `runner`; stop after step `until` when given."""
    records: Records = {}
    for step in steps:
        calls = step.calls(job, records)
        if calls:
            done = runner(step.stage, workspace, calls)
            records.update(zip([label for label, _ in calls], done, strict=True))
        if step.stage.name == until:
            break
    return records


def in_process(progress: Callable[[str], Progress | None] | None = None) -> Runner:
    """A runner that calls the stages here, one call after another.

    Args:
        progress: Given a call's label, returns its progress callback (or None).
    """

    def run(stage: Stage, workspace: str, calls: Sequence[Call]) -> list[StageRecord]:
        takes_progress = "progress" in inspect.signature(stage.run).parameters
        records = []
        for label, arguments in calls:
            extra = {"progress": progress(label)} if progress and takes_progress else {}
            records.append(stage.run(workspace, **arguments, **extra))
        return records

    return run


def stage_entry(record: StageRecord) -> dict[str, Any]:
    """The `--json` view of one stage: key, path, cached, seconds."""
    return {
        "key": record.key,
        "path": record.path,
        "cached": record.cached,
        "seconds": record.seconds,
    }


def run_record(workspace: str, stages: Mapping[str, StageRecord]) -> dict[str, Any]:
    """The `--json` record of a training run: workspace, model, stages, metrics."""
    metrics: dict[str, Any] = {}
    if evaluate.NAME in stages:
        metrics = stages[evaluate.NAME].summary.get("metrics", {})
    elif train.NAME in stages:
        metrics = stages[train.NAME].summary.get("metrics", {})
    return {
        "workspace": workspace,
        "model": stages[train.NAME].summary["model"] if train.NAME in stages else None,
        "stages": {name: stage_entry(r) for name, r in stages.items()},
        "metrics": metrics,
    }


def prediction_record(job: PredictionJob, output: str, stages: Records) -> dict[str, Any]:
    """The `--json` record of a batch prediction: workspace, output, scenes, stages."""
    return {
        "workspace": job.workspace,
        "output": output,
        "scenes": [s.scene_id for s in job.scenes],
        "stages": {name: stage_entry(r) for name, r in stages.items()},
    }


def default_workspace(output: str | Path) -> Path:
    """Where `p2p predict` caches its stages unless told: a hidden folder beside the output
    (for an ``s3://`` output, a local folder named after it, so a rerun resumes there)."""
    if storage.is_remote(output):
        return storage.staging_dir(str(output)) / ".p2p-work"
    return Path(output).absolute().parent / ".p2p-work"


def predict_in_process(
    job: PredictionJob,
    output: str | Path,
    progress: Callable[[str], Progress | None] | None = None,
) -> Records:
    """The prediction pipeline without Prefect (`p2p predict`): every scene checked first,
    then the same stages, keys and artifacts as the `batch_predict` flow, and the mosaic
    delivered to `output`.

    Args:
        job: The checked prediction.
        output: Where the mosaic is delivered (atomically; left as is when unchanged).
        progress: Given a call's label, returns its progress callback (or None).

    Returns:
        label → record of every stage.
    """
    from p2p.infer.inference import check_scene
    from p2p.infer.report import deliver_file
    from p2p.model.meta import read_ref

    ref = read_ref(job.model)  # the predict stage checks the weights; torch loads where one runs
    for scene in job.scenes:
        check_scene(ref, scene, job.per_scene)
    stages = run_steps(PREDICTION, job, job.workspace, in_process(progress))
    deliver_file(stages[mosaic.NAME].summary["output"], output)
    return stages
