"""Stage `train`: a dataset → ``{workspace}/train/{key}/`` (checkpoints, previews, the bundle)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2p.core.cache import KeyParts, StageRecord, finished_stage, run_stage
from p2p.core.config import ModelConfig, TrainConfig
from p2p.core.errors import StageError
from p2p.stages.stage import Progress, Stage, StageReport

if TYPE_CHECKING:
    from p2p.bands.normalization import BandStats
    from p2p.model.training import TrainResult

NAME = "train"
#: 2: the best-validation epoch is bundled, linear anchor, baselines
VERSION = 2


def key_parts(
    dataset: StageRecord | str | Path, model: ModelConfig, train: TrainConfig
) -> KeyParts:
    """The architecture, the loop settings (not loader workers or device: they change speed,
    not weights), and the dataset's key.

    The number of training processes enters as ``world_size`` when above one: ranks split
    each batch (and on CPU normalize their own share), so weights differ from one process's
    by float rounding at least. One process keys as it always did. ``devices: auto`` resolves
    on the machine that computes the key.
    """
    from p2p.model.world import world_size

    launch = {"num_workers", "device", "devices", "nodes", "rendezvous"}
    if not train.compile:  # named only when on: keys made before the setting existed hold
        launch.add("compile")
    world = world_size(train)
    config = {
        "model": model.model_dump(mode="json"),
        "train": train.model_dump(mode="json", exclude=launch),
        **({"world_size": world} if world > 1 else {}),
    }
    return KeyParts(NAME, VERSION, config, [finished_stage(dataset).key])


def run(
    workspace: str | Path,
    dataset: StageRecord | str | Path,
    model: ModelConfig,
    train: TrainConfig,
    progress: Progress | None = None,
) -> StageRecord:
    """Train on a finished dataset and bundle the generator.

    The folder holds ``checkpoints/``, ``previews/``, ``metrics.jsonl`` and ``model/`` (the
    bundle, written last). A killed run resumes from its newest complete checkpoint.

    Args:
        workspace: Workspace root.
        dataset: The dataset stage's record or folder.
        model: Architecture.
        train: Training loop settings.
        progress: Called with (steps done, steps in the run) about twice a second.

    Returns:
        The record; summary holds ``model`` (bundle folder), ``epochs``, ``kept_epoch`` (the
        epoch bundled), ``metrics`` (its validation metrics in target units, with the
        baselines' MAE and the skill ratio) and ``preview`` (last preview PNG or None).
    """
    ds = finished_stage(dataset)
    if ds.summary.get("n_train", 1) == 0:
        raise StageError(
            ds.path,
            "the dataset has no training chip; add scenes or lower tiling.min_valid_fraction",
        )
    parts = key_parts(ds, model, train)

    def build(folder: Path) -> dict[str, Any]:
        from p2p.bands.baselines import with_baselines
        from p2p.model.epoch import TrainProgress
        from p2p.model.training import train as train_loop
        from p2p.model.world import world_size
        from p2p.stages.train_worker import datasets, linear_anchor, train_on_ranks
        from p2p.stages.watch import where

        def report(p: TrainProgress) -> None:
            where(f"epoch {p.epoch} of {p.epochs}")  # a stall or Ctrl-C names the epoch
            if progress is not None:
                progress((p.epoch - 1) * p.steps_per_epoch + p.step, p.epochs * p.steps_per_epoch)

        n_val = int(ds.summary.get("n_val", 0))
        train_set, val_set, source_stats, target_stats = datasets(ds.path, n_val, train)
        if world_size(train) > 1:  # torchrun; progress is per epoch in metrics.jsonl
            result = train_on_ranks(ds.path, n_val, model, train, folder, progress)
        else:
            anchor = linear_anchor(ds.path, source_stats, target_stats)
            result = train_loop(
                train_set,
                val_set,
                model,
                train,
                folder,
                target_stats,
                progress=report,
                linear_init=anchor,
            )
        _bundle(folder / "model", result, ds, source_stats, target_stats, train)
        metrics = result.metrics
        if metrics:
            metrics = with_baselines(metrics, ds.summary.get("baselines", {}))
        previews = sorted((folder / "previews").glob("*.png"))
        return {
            "model": str(folder / "model"),
            "epochs": result.epochs_done,
            "kept_epoch": result.kept_epoch,
            "metrics": metrics,
            "preview": str(previews[-1]) if previews else None,
        }

    return run_stage(workspace, parts, build)


def _bundle(
    model_dir: Path,
    result: TrainResult,
    dataset: StageRecord,
    source_stats: BandStats,
    target_stats: BandStats,
    train: TrainConfig,
) -> None:
    """Write the trained generator and everything prediction needs as the model bundle."""
    from p2p.data.dataset import load_baselines
    from p2p.model.bundle import BundleMeta, write_bundle

    ds = dataset.summary
    meta = BundleMeta(
        model=result.model_cfg,
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
            "train": train.model_dump(mode="json"),
            "dataset_key": dataset.key,
            "n_train": ds.get("n_train"),
            "n_val": ds.get("n_val"),
            "kept_epoch": result.kept_epoch,
            "keep": result.keep,
        },
        metrics=result.metrics,
        baselines=load_baselines(dataset.path).to_dict(),
    )
    write_bundle(model_dir, result.load_generator(), meta)


def report(record: StageRecord, _: Mapping[str, Any]) -> StageReport:
    """The training report: skill against the baselines, metrics, the last preview (embedded)."""
    from p2p.infer.report import train_report

    return StageReport("p2p-train-report", "Training report", train_report(record.summary))


STAGE = Stage(NAME, VERSION, key_parts, run, task="train-model", gpu=True, report=report)
