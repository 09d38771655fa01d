"""Pipeline glue that the flows compose: the train and evaluate stages, scene expansion,
path checks, and the run record. Plain Python (no Prefect), so a notebook can run it too.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from p2p.core.cache import StageRecord, read_manifest, run_stage, stage_key
from p2p.core.config import (
    BatchPredictConfig,
    ModelConfig,
    MosaicConfig,
    PipelineConfig,
    PredictConfig,
    SceneConfig,
    TrainConfig,
)
from p2p.core.errors import InputError, StageError
from p2p.core.fsutil import atomic_write_json
from p2p.core.roots import allowed_roots, check_path
from p2p.data.dataset import ChipDataset
from p2p.infer.inference import PREDICT_VERSION, predict_key_parts
from p2p.infer.mosaic import MOSAIC_VERSION, mosaic_key_parts
from p2p.infer.translator import pick_device
from p2p.model.bundle import Bundle, BundleMeta, load_bundle, read_meta, write_bundle
from p2p.model.distributed import world_size
from p2p.model.metrics import MetricAccumulator
from p2p.model.normalization import BandStats, denormalize
from p2p.model.training import TrainProgress, TrainResult, train
from p2p.stages.train_worker import datasets, train_on_ranks

log = logging.getLogger(__name__)

TRAIN_VERSION = 1
EVALUATE_VERSION = 1
STAGES = ("tile", "dataset", "train", "evaluate")
Progress = Callable[[int, int], None]


# --- paths from flow parameters ------------------------------------------------------------


def checked_pipeline_config(config: PipelineConfig) -> PipelineConfig:
    """Resolve the workspace and every scene file, each under `P2P_ALLOWED_ROOTS`.

    Raises:
        PathNotAllowedError: a path resolves outside the allowed roots.
        InputError: the config names no scene.
    """
    roots = allowed_roots()
    if not config.scenes:
        raise InputError("scenes", "the training pipeline needs at least one scene pair")
    scenes = [
        s.model_copy(
            update={
                "source": [str(check_path(p, roots)) for p in s.source],
                "target": [str(check_path(p, roots)) for p in s.target or []],
            }
        )
        for s in config.scenes
    ]
    workspace = str(check_path(config.workspace, roots))
    return config.model_copy(update={"workspace": workspace, "scenes": scenes})


def expand_scenes(patterns: Sequence[str], nodata: float | None = None) -> list[SceneConfig]:
    """Turn batch entries into scenes: a glob pattern gives one scene per match (sorted), a
    comma-joined entry is one scene stacked from band files, anything else one file.

    Raises:
        InputError: a pattern matches nothing, a file is missing, or two scenes share an id.
    """
    scenes: list[SceneConfig] = []
    for entry in patterns:
        if glob.has_magic(entry):
            matches = sorted(glob.glob(str(Path(entry).expanduser())))
            if not matches:
                raise InputError(entry, "the pattern matches no file")
            scenes += [SceneConfig(source=[m], nodata=nodata) for m in matches]
        else:
            scenes.append(SceneConfig.model_validate({"source": entry, "nodata": nodata}))
    seen: dict[str, str] = {}
    for scene in scenes:
        for f in scene.source:
            if not Path(f).is_file():
                raise InputError(f, "file not found")
        if scene.scene_id in seen:
            raise InputError(
                scene.source[0], f"scene id {scene.scene_id!r} repeats {seen[scene.scene_id]}"
            )
        seen[scene.scene_id] = scene.source[0]
    return scenes


def checked_batch_config(
    config: BatchPredictConfig,
) -> tuple[BatchPredictConfig, list[SceneConfig]]:
    """Resolve and check the batch paths under the allowed roots, and expand the scenes.

    Patterns are checked before they are expanded (a pattern outside the roots never lists a
    folder) and every match again after (a symlink inside a root may point outside).
    """
    roots = allowed_roots()
    for entry in config.scenes:
        for part in entry.split(","):
            check_path(part.strip(), roots)
    scenes = expand_scenes(config.scenes, config.predict.nodata)
    for scene in scenes:
        for f in scene.source:
            check_path(f, roots)
    checked = config.model_copy(
        update={
            "workspace": str(check_path(config.workspace, roots)),
            "model": str(check_path(config.model, roots)),
            "output": str(check_path(config.output, roots)),
        }
    )
    return checked, scenes


# --- the run record ----------------------------------------------------------------------


def stage_entry(record: StageRecord) -> dict[str, Any]:
    """The `--json` view of one stage: key, path, cached, seconds."""
    return {
        "key": record.key,
        "path": record.path,
        "cached": record.cached,
        "seconds": record.seconds,
    }


# --- train and evaluate stages ---------------------------------------------------------


def finished_stage(stage_or_dir: StageRecord | str | Path) -> StageRecord:
    """A finished stage as a record: given one, or read from a stage folder's manifest.

    Raises:
        StageError: the folder has no manifest (the stage is unfinished or never ran).
    """
    if isinstance(stage_or_dir, StageRecord):
        return stage_or_dir
    folder = Path(stage_or_dir)
    manifest = read_manifest(folder)
    if manifest is None:
        raise StageError(folder, "no manifest.json: this stage has not finished; run it first")
    return StageRecord(
        stage=manifest["stage"],
        key=manifest["key"],
        path=str(folder),
        cached=True,
        seconds=0.0,
        summary=manifest.get("summary", {}),
    )


def train_stage_config(model_cfg: ModelConfig, train_cfg: TrainConfig) -> dict[str, Any]:
    """What of the config keys the train stage (the loader workers only change speed).

    The number of training processes enters as ``world_size`` when above one: ranks split
    each batch (and on CPU normalize their own share), so weights differ from one process's
    by float rounding at least. One process keys as it always did.
    """
    launch = {"num_workers", "device", "devices", "nodes", "rendezvous"}
    world = world_size(train_cfg)
    return {
        "model": model_cfg.model_dump(mode="json"),
        "train": train_cfg.model_dump(mode="json", exclude=launch),
        **({"world_size": world} if world > 1 else {}),
    }


def train_stage_key(dataset_key: str, model_cfg: ModelConfig, train_cfg: TrainConfig) -> str:
    """The train stage's cache key (also the Prefect task's)."""
    return stage_key(
        "train", TRAIN_VERSION, train_stage_config(model_cfg, train_cfg), [dataset_key]
    )


def _bundle(
    model_dir: Path,
    result: TrainResult,
    dataset: StageRecord,
    source_stats: BandStats,
    target_stats: BandStats,
    train_cfg: TrainConfig,
) -> None:
    """Write the trained generator and everything prediction needs as the model bundle."""
    ds = dataset.summary
    meta = BundleMeta(
        model=result.model_cfg.model_dump(mode="json"),
        in_channels=result.in_channels,
        out_channels=result.out_channels,
        source_bands=tuple(ds["source_bands"]),
        target_bands=tuple(ds["target_bands"]),
        source_stats=source_stats.to_dict(),
        target_stats=target_stats.to_dict(),
        target_dtype=str(ds["target_dtype"]),
        target_nodata=ds["target_nodata"],
        source_nodata=ds["source_nodata"],
        chip_size=int(ds["chip_size"]),
        training={
            "epochs": result.epochs_done,
            "train": train_cfg.model_dump(mode="json"),
            "dataset_key": dataset.key,
            "n_train": ds.get("n_train"),
            "n_val": ds.get("n_val"),
        },
        metrics=result.metrics,
    )
    write_bundle(model_dir, result.load_generator(), meta)


def train_stage(
    workspace: str | Path,
    dataset: StageRecord | str | Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    progress: Callable[[TrainProgress], None] | None = None,
) -> StageRecord:
    """Train on a finished dataset and bundle the generator: ``{workspace}/train/{key}/``.

    The folder holds ``checkpoints/``, ``previews/``, ``metrics.jsonl`` and ``model/`` (the
    bundle, written last). A killed run resumes from its newest complete checkpoint.

    Args:
        workspace: Workspace root.
        dataset: The dataset stage's record or folder.
        model_cfg: Architecture.
        train_cfg: Training loop settings.
        progress: Called with running losses about twice a second.

    Returns:
        The record; summary holds ``model`` (bundle folder), ``epochs``, ``metrics`` (last
        validation metrics in target units) and ``preview`` (last preview PNG or None).
    """
    ds = finished_stage(dataset)
    if ds.summary.get("n_train", 1) == 0:
        raise StageError(
            ds.path,
            "the dataset has no training chip; add scenes or lower tiling.min_valid_fraction",
        )

    def build(folder: Path) -> dict[str, Any]:
        n_val = int(ds.summary.get("n_val", 0))
        train_set, val_set, source_stats, target_stats = datasets(ds.path, n_val, train_cfg)
        if world_size(train_cfg) > 1:  # torchrun; progress is per epoch in metrics.jsonl
            result = train_on_ranks(ds.path, n_val, model_cfg, train_cfg, folder)
        else:
            result = train(train_set, val_set, model_cfg, train_cfg, folder, target_stats, progress)
        _bundle(folder / "model", result, ds, source_stats, target_stats, train_cfg)
        previews = sorted((folder / "previews").glob("*.png"))
        return {
            "model": str(folder / "model"),
            "epochs": result.epochs_done,
            "metrics": result.metrics,
            "preview": str(previews[-1]) if previews else None,
        }

    return run_stage(
        workspace,
        "train",
        TRAIN_VERSION,
        train_stage_config(model_cfg, train_cfg),
        [ds.key],
        build,
    )


def predict_stage_key(model_dir: str | Path, scene: SceneConfig, config: PredictConfig) -> str:
    """The predict stage's cache key: the inputs `p2p.infer.inference.predict_stage` keys on."""
    weights_hash = read_meta(model_dir)[1] or load_bundle(model_dir).weights_hash
    return stage_key("predict", PREDICT_VERSION, *predict_key_parts(weights_hash, scene, config))


def mosaic_stage_key(
    prediction_paths: Sequence[str], config: MosaicConfig, output_format: str
) -> str:
    """The mosaic stage's cache key: the same inputs `p2p.infer.mosaic.mosaic_stage` keys on."""
    parts = mosaic_key_parts(prediction_paths, config, output_format)
    return stage_key("mosaic", MOSAIC_VERSION, *parts)


@torch.no_grad()
def evaluate_chips(
    bundle: Bundle, chips: ChipDataset, batch_size: int = 8, device: str = "auto"
) -> dict[str, Any]:
    """Metrics of a bundle's generator over a chip split, in target units.

    The data range of each band is the span of the bundle's target statistics (as in
    training's validation), so these numbers match the last epoch's validation metrics.

    Returns:
        `MetricAccumulator.compute()`: per-band and overall MAE, RMSE, PSNR (dB), SSIM.
    """
    stats = BandStats.from_dict(bundle.meta.target_stats)
    spans = [h - lo if h > lo else 1.0 for lo, h in zip(stats.low, stats.high, strict=True)]
    acc = MetricAccumulator(spans)
    dev = pick_device(device)
    generator = bundle.generator.to(dev).eval()
    for source, target, valid in DataLoader(chips, batch_size=batch_size):
        fake = generator(source.to(dev)).float().cpu()
        acc.update(denormalize(fake, stats), denormalize(target, stats), valid > 0.5)
    return acc.compute()


def evaluate_stage_key(train_key: str, dataset_key: str, predict: PredictConfig) -> str:
    """The evaluate stage's cache key (also the Prefect task's)."""
    config = {"split": "val", "batch_size": predict.batch_size}
    return stage_key("evaluate", EVALUATE_VERSION, config, [train_key, dataset_key])


def evaluate_stage(
    workspace: str | Path,
    train: StageRecord | str | Path,
    dataset: StageRecord | str | Path,
    predict: PredictConfig,
) -> StageRecord:
    """Evaluate the model bundle on the validation chips: ``{workspace}/evaluate/{key}/``.

    The bundle (the artifact users ship) is loaded from the train folder and run over every
    validation chip; the folder gets ``metrics.json``: per-band and overall MAE, RMSE (target
    units), PSNR (dB) and SSIM, over valid pixels only.
    """
    tr, ds = finished_stage(train), finished_stage(dataset)
    config = {"split": "val", "batch_size": predict.batch_size}

    def build(folder: Path) -> dict[str, Any]:
        bundle = load_bundle(tr.summary["model"])
        val_set = ChipDataset(ds.path, "val")
        metrics = evaluate_chips(bundle, val_set, predict.batch_size, predict.device)
        atomic_write_json(folder / "metrics.json", metrics)
        return {"metrics": metrics, "n_chips": len(val_set), "bands": val_set.target_bands}

    return run_stage(workspace, "evaluate", EVALUATE_VERSION, config, [tr.key, ds.key], build)


def run_record(workspace: str, stages: dict[str, StageRecord]) -> dict[str, Any]:
    """The `--json` record of a training run: workspace, model, stages, metrics."""
    metrics: dict[str, Any] = {}
    if "evaluate" in stages:
        metrics = stages["evaluate"].summary.get("metrics", {})
    elif "train" in stages:
        metrics = stages["train"].summary.get("metrics", {})
    return {
        "workspace": workspace,
        "model": stages["train"].summary["model"] if "train" in stages else None,
        "stages": {name: stage_entry(r) for name, r in stages.items()},
        "metrics": metrics,
    }
