"""The Pix2Pix training loop (Isola et al., 2017), resumable to the bit.

Read `train_step` against the paper: one generator forward, a discriminator step on the halved
BCE loss, then a generator step on BCE + λ·L1 (L1 over valid pixels only). Around it, `train`
runs epochs with Adam and a constant-then-linear-decay learning rate, validates in target units,
writes a preview and `metrics.jsonl` line, and checkpoints everything each epoch (one epoch's
steps, validation and BatchNorm statistics: `p2p.model.epoch`).

Exact resume: every epoch reseeds all RNGs from (seed, epoch), and a checkpoint holds the
complete state at an epoch boundary, so a run killed anywhere and restarted ends with the same
weights, bit for bit on CPU, as one never interrupted.

Needs only torch and numpy at runtime (config objects are passed in, never imported), so it
runs on a bare GPU box.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

import p2p.model.distributed as distributed
from p2p.bands.normalization import BandStats
from p2p.core.errors import CheckpointError, InputError
from p2p.core.fsutil import atomic_write_text, json_text
from p2p.model.checkpoint import (
    capture_rng,
    checkpoint_path,
    load_generator,
    load_newest,
    restore_rng,
    save_checkpoint,
)
from p2p.model.epoch import (
    LoopOptions,
    Sample,
    TrainProgress,
    recompute_batchnorm,
    seed_epoch,
    seed_worker,
    train_epoch,
    validate,
    write_epoch_preview,
)
from p2p.model.networks import UNetGenerator
from p2p.model.pix2pix import Pix2Pix, build_pix2pix, select_device

if TYPE_CHECKING:
    from p2p.core.config import ModelConfig, TrainConfig

log = logging.getLogger(__name__)

#: The best validation epoch so far: epoch, mae, metrics, generator (CPU state dict), or None.
Best = dict[str, Any] | None


@dataclass(frozen=True)
class TrainResult:
    """What `train` leaves.

    Attributes:
        epochs_done: Epochs completed (cfg.epochs + cfg.epochs_decay when finished).
        metrics: Validation metrics of the kept epoch (`MetricAccumulator.compute()` form,
            target units); empty without a validation set.
        checkpoint: The newest checkpoint (epoch 0 holds the initial weights when no epoch ran).
        in_channels: Source bands.
        out_channels: Target bands.
        model_cfg: The architecture trained.
        kept_epoch: The epoch whose generator `load_generator` returns: the one with the lowest
            validation MAE when `keep` is "best" and there was validation, else the last.
        keep: "best" or "last" (`TrainConfig.keep`).
    """

    epochs_done: int
    metrics: dict[str, Any]
    checkpoint: Path
    in_channels: int
    out_channels: int
    model_cfg: ModelConfig
    kept_epoch: int = 0
    keep: str = "last"

    def load_generator(self, device: str | torch.device = "cpu") -> UNetGenerator:
        """The kept generator, in eval mode."""
        return load_generator(
            self.checkpoint,
            self.model_cfg,
            self.in_channels,
            self.out_channels,
            device,
            best=self.keep == "best",
        )


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json_text(record, indent=None))
        fh.flush()
        os.fsync(fh.fileno())


def _truncate_metrics(path: Path, last_epoch: int) -> None:
    """Drop metrics lines past the checkpoint's epoch (written before a crash), and torn lines."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError, TypeError, KeyError):
            if json.loads(line)["epoch"] <= last_epoch:
                kept.append(line + "\n")
    atomic_write_text(path, "".join(kept))


def _state(run: Pix2Pix, metrics: dict[str, Any], best: Best) -> dict[str, Any]:
    rng = capture_rng(run.loader_gen)
    return {**run.state_dict(), "rng": rng, "metrics": metrics, "best": best}


def _better(best: Best, run: Pix2Pix, epoch: int, metrics: dict[str, Any]) -> Best:
    """`best` updated with this epoch when its validation MAE is lower (ties keep the older)."""
    mae = metrics.get("overall", {}).get("mae")
    if mae is None or (best is not None and mae >= best["mae"]):
        return best
    state = {k: v.detach().to("cpu", copy=True) for k, v in run.g_eval.state_dict().items()}
    return {"epoch": epoch, "mae": float(mae), "metrics": metrics, "generator": state}


def _resume(run: Pix2Pix, out_dir: Path) -> tuple[int, dict[str, Any], Path | None, Best]:
    """Restore the newest loadable checkpoint; returns (epoch, its metrics, its path, best)."""
    state = load_newest(out_dir / "checkpoints")
    main = distributed.current().main  # every rank resumes; rank 0 alone writes
    if state is None:
        if main:
            _truncate_metrics(out_dir / "metrics.jsonl", 0)
        return 0, {}, None, None
    path = Path(state["path"])
    try:
        run.load_state_dict(state)
        restore_rng(state["rng"], run.loader_gen)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        problem = str(exc).splitlines()[0]
        raise CheckpointError(
            path, f"does not fit this run ({problem}); remove it to restart"
        ) from None
    if main:
        _truncate_metrics(out_dir / "metrics.jsonl", state["epoch"])
    log.info("resuming after epoch %d from %s", state["epoch"], path)
    return int(state["epoch"]), dict(state["metrics"]), path, state.get("best")


def _check_inputs(
    train_set: Dataset[Sample],
    val_set: Dataset[Sample] | None,
    model_cfg: ModelConfig,
    stats: BandStats,
) -> tuple[int, int]:
    """Band counts of the data, after checking it fits the model; raises before any work."""
    if len(cast(Sized, train_set)) == 0:
        raise InputError("training set", "holds no chips")
    x, y, valid = train_set[0]
    h, w = x.shape[-2:]
    multiple = 2**model_cfg.num_downs
    if h % multiple or w % multiple:
        raise InputError(
            "training set",
            f"chips are {h}x{w} pixels; with model.num_downs={model_cfg.num_downs} each side "
            f"must be a multiple of {multiple}",
        )
    if min(h, w) // 2**model_cfg.n_layers_d < 3:  # PatchGAN's two stride-1 convs need 3 px
        raise InputError(
            "training set",
            f"chips of {h}x{w} pixels are too small for a PatchGAN with "
            f"model.n_layers_d={model_cfg.n_layers_d}",
        )
    if y.shape[-2:] != (h, w) or tuple(valid.shape) != (1, h, w):
        raise InputError(
            "training set",
            f"target {tuple(y.shape)} or mask {tuple(valid.shape)} "
            f"does not match source {tuple(x.shape)}",
        )
    if y.shape[0] != stats.bands:
        raise InputError("training set", f"target has {y.shape[0]} bands, statistics {stats.bands}")
    if val_set is not None and len(cast(Sized, val_set)):
        vx, vy, _ = val_set[0]
        if (vx.shape[0], vy.shape[0]) != (x.shape[0], y.shape[0]):
            raise InputError("validation set", "band counts differ from the training set")
    return int(x.shape[0]), int(y.shape[0])


@functools.cache
def _warn_small_batch() -> None:
    """Once per process: batch 1 leaves a GPU mostly idle (MFU 1 % against 21 % at 64)."""
    log.warning(
        "train.batch_size 1 on CUDA keeps the GPU about 1%% busy; use 16-64 chips a step "
        "(docs/training.md, Batch size on a GPU)"
    )


def compile_steps(run: Pix2Pix) -> None:
    """Run the G and D steps through torch.compile (`train.compile`); the plain networks stay
    in ``run.g``/``run.d``, so checkpoints keep their keys."""
    run.g_step = torch.compile(run.g if run.g_step is None else run.g_step)  # type: ignore[assignment]
    run.d_step = torch.compile(run.d if run.d_step is None else run.d_step)  # type: ignore[assignment]


def _loaders(
    run: Pix2Pix, train_set: Dataset[Sample], val_set: Dataset[Sample] | None, cfg: TrainConfig
) -> tuple[DataLoader[Sample], DataLoader[Sample] | None]:
    pin = run.device.type == "cuda"
    common: dict[str, Any] = {"num_workers": cfg.num_workers, "pin_memory": pin}
    if cfg.num_workers:  # a dataset read through a client that does not survive fork says so
        common["multiprocessing_context"] = getattr(train_set, "worker_start_method", None)
    loader = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        sampler=distributed.sampler(train_set, cfg.seed),  # this rank's shard, per-epoch order
        generator=run.loader_gen,
        worker_init_fn=seed_worker,
        **common,
    )
    if val_set is None or len(cast(Sized, val_set)) == 0:
        return loader, None
    return loader, DataLoader(val_set, batch_size=cfg.batch_size, **common)


@dataclass(frozen=True)
class _Loop:
    """What every epoch of one run uses: the setup, its data and where it writes."""

    run: Pix2Pix
    loader: DataLoader[Sample]
    val_loader: DataLoader[Sample] | None
    val_set: Dataset[Sample] | None
    options: LoopOptions
    out_dir: Path
    target_stats: BandStats
    progress: Callable[[TrainProgress], None] | None


def _run_epoch(loop: _Loop, epoch: int, best: Best) -> tuple[dict[str, Any], Path, Best]:
    """Train, validate, preview, log and checkpoint one epoch (with the best generator so far).

    Returns:
        (validation metrics, checkpoint, best epoch so far).
    """
    t0 = time.monotonic()
    run, loader, options, out_dir = loop.run, loop.loader, loop.options, loop.out_dir
    seed_epoch(options.seed, epoch, run.loader_gen)
    cast(DistributedSampler[Sample], loader.sampler).set_epoch(epoch)
    set_epoch = getattr(loader.dataset, "set_epoch", None)
    if callable(set_epoch):  # datasets that draw augmentations per epoch (ChipDataset)
        set_epoch(epoch)
    lr = run.opt_g.param_groups[0]["lr"]
    losses = train_epoch(run, loader, epoch, options, loop.progress)
    run.sched_g.step()
    run.sched_d.step()
    if options.bn_stats == "recompute":
        recompute_batchnorm(run, loader.dataset, options.batch_size)
    metrics: dict[str, Any] = {}
    if not distributed.current().main:  # rank 0 validates and writes; the others go on
        return metrics, checkpoint_path(out_dir / "checkpoints", epoch), best
    if loop.val_loader is not None and loop.val_set is not None:
        metrics = validate(run, loop.val_loader, loop.target_stats)
        if options.preview_chips:
            preview = out_dir / "previews" / f"epoch_{epoch:04d}.png"
            write_epoch_preview(run, loop.val_set, options.preview_chips, preview)
    seconds = time.monotonic() - t0
    record = {"epoch": epoch, "lr": lr, **losses, **_flat(metrics), "seconds": seconds}
    # the metrics line goes first: a crash before the checkpoint leaves a line that resume drops
    _append_jsonl(out_dir / "metrics.jsonl", record)
    best = _better(best, run, epoch, metrics)
    ckpt = save_checkpoint(out_dir / "checkpoints", epoch, _state(run, metrics, best))
    mae = metrics.get("overall", {}).get("mae")
    log.info(
        "epoch %d/%d: loss_g %.4f, loss_d %.4f, val MAE %s, %.1f s",
        epoch,
        options.epochs,
        losses["loss_g"],
        losses["loss_d"],
        mae,
        seconds,
    )
    return metrics, ckpt, best


def train(
    train_set: Dataset[Sample],
    val_set: Dataset[Sample] | None,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    out_dir: Path,
    target_stats: BandStats,
    *,
    progress: Callable[[TrainProgress], None] | None = None,
    linear_init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> TrainResult:
    """Train Pix2Pix, resuming from the newest complete checkpoint in `out_dir`.

    Each checkpoint also holds the generator of the epoch with the lowest validation MAE so
    far, so `keep: best` survives a resume.

    Writes `out_dir/checkpoints/epoch_NNNN.safetensors` (newest 2 kept), `metrics.jsonl` (one
    line per epoch: losses, lr, validation MAE/RMSE/PSNR/SSIM in target units, seconds) and
    `previews/epoch_NNNN.png` (source | generated | target of the first validation chips).

    Args:
        train_set: Yields `(source (Cs, H, W), target (Ct, H, W), valid (1, H, W))`, sources and
            targets float32 normalized to [-1, 1]; it does its own augmentation.
        val_set: The same without augmentation, or None (no metrics, no previews).
        model_cfg: Architecture.
        cfg: Loop settings (read once into `LoopOptions`, which the epochs and steps get).
        out_dir: The stage folder; partial work there is resumed.
        target_stats: The target normalization, to report metrics in target units.
        progress: Called with running losses about twice a second and at each epoch's ends.
        linear_init: Start of the linear path of a `linear_anchor` model (see
            `build_pix2pix`): `(Ct, Cs)` weight and `(Ct,)` bias in normalized units.

    Raises:
        InputError: The data does not fit the model (chip size, band counts).
        ConfigError: CUDA was asked for and is absent.
        CheckpointError: A checkpoint in `out_dir` belongs to a different model.
    """
    in_ch, out_ch = _check_inputs(train_set, val_set, model_cfg, target_stats)
    device = select_device(cfg.device)
    out_dir = Path(out_dir)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed chip size: pick the fastest conv kernels
        if cfg.batch_size == 1:
            _warn_small_batch()
    run = build_pix2pix(model_cfg, cfg, in_ch, out_ch, device, linear_init=linear_init)
    distributed.wrap(run)  # data-parallel when launched as one of several ranks
    if getattr(cfg, "compile", False):  # a duck-typed config without it: off
        compile_steps(run)
    out_dir.mkdir(parents=True, exist_ok=True)
    start, metrics, ckpt, best = _resume(run, out_dir)
    loader, val_loader = _loaders(run, train_set, val_set, cfg)
    options = LoopOptions.of(cfg)
    loop = _Loop(run, loader, val_loader, val_set, options, out_dir, target_stats, progress)
    total = options.epochs
    log.info("training epochs %d..%d on %s (%s)", start + 1, total, device, run.amp_dtype)
    for epoch in range(start + 1, total + 1):
        metrics, ckpt, best = _run_epoch(loop, epoch, best)
    if ckpt is None:  # zero epochs: keep the initial weights so a bundle can still be written
        ckpt = checkpoint_path(out_dir / "checkpoints", 0)
        if distributed.current().main:
            ckpt = save_checkpoint(out_dir / "checkpoints", 0, _state(run, metrics, best))
    distributed.barrier()  # rank 0's files are complete before any rank returns
    done = max(start, total)
    if options.keep == "best" and best is not None:
        if best["epoch"] != done:
            log.info("keeping epoch %d (lowest validation MAE %.4g)", best["epoch"], best["mae"])
        return TrainResult(
            done, best["metrics"], ckpt, in_ch, out_ch, model_cfg, best["epoch"], "best"
        )
    return TrainResult(done, metrics, ckpt, in_ch, out_ch, model_cfg, done, "last")


def _flat(metrics: dict[str, Any]) -> dict[str, Any]:
    if not metrics:
        return {}
    flat = {f"val_{k}": v for k, v in metrics["overall"].items()}
    return {**flat, "val_bands": metrics["bands"]}
