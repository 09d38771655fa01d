"""Data-parallel training of the train stage: the stage launches torchrun, each rank runs `main`.

`train_on_ranks` (called by the train stage when `train.devices` × `train.nodes` > 1) writes
the run's spec (``ddp.json``: dataset folder, model and train configs) into the stage folder
and starts this node's ranks with `p2p.model.distributed.launch`:

    python -m torch.distributed.run --nproc-per-node N ... -m p2p.stages.train_worker ddp.json

Every rank builds the same datasets and runs `p2p.model.training.train`; rank 0 writes the
checkpoints, metrics, previews and ``ddp_result.json``, from which the stage writes the bundle.
A P2PError in a rank is printed as one ``error:`` line into ``ddp.log``, and the stage fails
with it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import torch

from p2p.bands.baselines import normalized_linear
from p2p.bands.normalization import BandStats
from p2p.core.config import ModelConfig, TrainConfig
from p2p.core.errors import P2PError, StageError
from p2p.core.fsutil import atomic_write_json, read_json
from p2p.data.dataset import ChipDataset, load_baselines, load_stats
from p2p.model import distributed
from p2p.model.training import TrainResult, train
from p2p.stages.stage import Progress
from p2p.stages.watch import checkpoint, where

SPEC = "ddp.json"
RESULT = "ddp_result.json"
LOG = "ddp.log"


def datasets(
    dataset_dir: str | Path, n_val: int, cfg: TrainConfig
) -> tuple[ChipDataset, ChipDataset | None, BandStats, BandStats]:
    """Train and validation sets of a finished dataset folder, and its (source, target)
    statistics."""
    source_stats, target_stats = load_stats(dataset_dir)
    train_set = ChipDataset(dataset_dir, "train", augment=cfg.augment, seed=cfg.seed)
    val_set = ChipDataset(dataset_dir, "val") if n_val else None
    return train_set, val_set, source_stats, target_stats


def linear_anchor(
    dataset_dir: str | Path, source_stats: BandStats, target_stats: BandStats
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The start of a `linear_anchor` generator's linear path: the dataset's least-squares fit
    in normalized units (`p2p.bands.baselines.normalized_linear`)."""
    return normalized_linear(load_baselines(dataset_dir), source_stats, target_stats)


def train_on_ranks(
    dataset_dir: str | Path,
    n_val: int,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    folder: Path,
    progress: Progress | None = None,
) -> TrainResult:
    """Train with this node's share of `world_size(cfg)` processes under torchrun.

    Progress is reported per finished epoch (the lines of ``metrics.jsonl``), so the stall
    watchdog sees the ranks; an interrupt or a stall stops torchrun and its ranks.

    Raises:
        StageError: A rank failed; the message names it and the log. A rerun resumes from
            the newest checkpoint.
    """
    spec = {
        "dataset": str(dataset_dir),
        "n_val": n_val,
        "model": model_cfg.model_dump(mode="json"),
        "train": cfg.model_dump(mode="json"),
        "out_dir": str(folder),
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RESULT).unlink(missing_ok=True)
    atomic_write_json(folder / SPEC, spec)
    poll = _epoch_progress(folder / "metrics.jsonl", cfg.epochs + cfg.epochs_decay, progress)
    distributed.launch(cfg, folder.name, __name__, [str(folder / SPEC)], folder / LOG, poll)
    if not (folder / RESULT).is_file():
        raise StageError(folder, f"the training processes left no {RESULT}; see {folder / LOG}")
    done = read_json(folder / RESULT)
    return TrainResult(
        epochs_done=int(done["epochs_done"]),
        metrics=dict(done["metrics"]),
        checkpoint=Path(done["checkpoint"]),
        in_channels=int(done["in_channels"]),
        out_channels=int(done["out_channels"]),
        model_cfg=model_cfg,
        kept_epoch=int(done["kept_epoch"]),
        keep=str(done["keep"]),
    )


def _epoch_progress(metrics: Path, epochs: int, progress: Progress | None) -> Callable[[], None]:
    """A `launch` poll: raises on an interrupt, reports each epoch the ranks finish."""
    seen = [-1]

    def poll() -> None:
        checkpoint()
        done = len(metrics.read_text().splitlines()) if metrics.is_file() else 0
        if done != seen[0]:
            seen[0] = done
            where(f"epoch {min(done + 1, epochs)} of {epochs}")
            if progress is not None:
                progress(done, epochs)

    return poll


def run_rank(spec: dict[str, Any]) -> None:
    """One rank's training; rank 0 records the result."""
    cfg = TrainConfig.model_validate(spec["train"])
    model_cfg = ModelConfig.model_validate(spec["model"])
    out_dir = Path(spec["out_dir"])
    train_set, val_set, source_stats, target_stats = datasets(spec["dataset"], spec["n_val"], cfg)
    anchor = linear_anchor(spec["dataset"], source_stats, target_stats)
    result = train(train_set, val_set, model_cfg, cfg, out_dir, target_stats, linear_init=anchor)
    if distributed.current().main:
        atomic_write_json(
            out_dir / RESULT,
            {
                "epochs_done": result.epochs_done,
                "metrics": result.metrics,
                "checkpoint": str(result.checkpoint),
                "in_channels": result.in_channels,
                "out_channels": result.out_channels,
                "kept_epoch": result.kept_epoch,
                "keep": result.keep,
            },
        )


def main(argv: list[str]) -> NoReturn:
    """Entry point of one rank: ``python -m p2p.stages.train_worker SPEC.json``."""
    distributed.init_from_torchrun()
    try:
        run_rank(read_json(argv[0]))
    except P2PError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        distributed.exit_rank(1)
    distributed.exit_rank(0)


if __name__ == "__main__":
    main(sys.argv[1:])
