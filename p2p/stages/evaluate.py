"""Stage `evaluate`: the bundle on the validation chips → ``{workspace}/evaluate/{key}/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from p2p.core.cache import KeyParts, StageRecord, finished_stage, run_stage
from p2p.core.config import PredictConfig
from p2p.core.fsutil import atomic_write_json
from p2p.stages.stage import Stage

NAME = "evaluate"
VERSION = 1


def key_parts(
    train: StageRecord | str | Path, dataset: StageRecord | str | Path, predict: PredictConfig
) -> KeyParts:
    """The split and batch size, and the train and dataset stages' keys."""
    config = {"split": "val", "predict": {"batch_size": predict.batch_size}}
    return KeyParts(NAME, VERSION, config, [finished_stage(train).key, finished_stage(dataset).key])


def run(
    workspace: str | Path,
    train: StageRecord | str | Path,
    dataset: StageRecord | str | Path,
    predict: PredictConfig,
) -> StageRecord:
    """Evaluate the model bundle on the validation chips.

    The bundle (the artifact users ship) is loaded from the train folder and run over every
    validation chip; the folder gets ``metrics.json``: per-band and overall MAE, RMSE (target
    units), PSNR (dB) and SSIM, over valid pixels only.
    """
    tr, ds = finished_stage(train), finished_stage(dataset)
    parts = key_parts(tr, ds, predict)

    def build(folder: Path) -> dict[str, Any]:
        from p2p.data.dataset import ChipDataset
        from p2p.infer.evaluation import evaluate_chips
        from p2p.model.bundle import load_bundle

        bundle = load_bundle(tr.summary["model"])
        val_set = ChipDataset(ds.path, "val")
        metrics = evaluate_chips(bundle, val_set, predict.batch_size, predict.device)
        atomic_write_json(folder / "metrics.json", metrics)
        return {"metrics": metrics, "n_chips": len(val_set), "bands": val_set.target_bands}

    return run_stage(workspace, parts, build)


STAGE = Stage(NAME, VERSION, key_parts, run, gpu=True)
