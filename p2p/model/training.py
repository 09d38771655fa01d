"""The Pix2Pix training loop (Isola et al., 2017), resumable to the bit.

Read `train_step` against the paper: one generator forward, a discriminator step on the halved
BCE loss, then a generator step on BCE + λ·L1 (L1 over valid pixels only). Around it, `train`
runs epochs with Adam and a constant-then-linear-decay learning rate, validates in target units,
writes a preview and `metrics.jsonl` line, and checkpoints everything each epoch.

Exact resume: every epoch reseeds all RNGs from (seed, epoch), and a checkpoint holds the
complete state at an epoch boundary, so a run killed anywhere and restarted ends with the same
weights, bit for bit on CPU, as one never interrupted.

Needs only torch and numpy at runtime (config objects are passed in, never imported), so it
runs on a bare GPU box.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

import p2p.model.distributed as distributed
from p2p.core.errors import CheckpointError, InputError
from p2p.core.fsutil import atomic_write_text
from p2p.model.checkpoint import (
    capture_rng,
    checkpoint_path,
    load_newest,
    restore_rng,
    save_checkpoint,
)
from p2p.model.metrics import score_batches
from p2p.model.networks import UNetGenerator, build_generator
from p2p.model.normalization import BandStats
from p2p.model.pix2pix import LOSS_NAMES, Pix2Pix, build_pix2pix, select_device, train_step
from p2p.model.preview import comparison_rows, write_preview

if TYPE_CHECKING:
    from p2p.core.config import ModelConfig, TrainConfig

log = logging.getLogger(__name__)

Sample = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
#: The best validation epoch so far: epoch, mae, metrics, generator (CPU state dict), or None.
Best = dict[str, Any] | None
PROGRESS_INTERVAL_S = 0.5  # progress reports cost a device sync; at most ~2 per second


@dataclass(frozen=True)
class TrainProgress:
    """A progress report: where the run is and its running mean losses this epoch."""

    epoch: int  # 1-based
    epochs: int  # total, including decay epochs
    step: int  # 1-based within the epoch
    steps_per_epoch: int
    losses: dict[str, float]  # LOSS_NAMES → running mean this epoch


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


def _seed_epoch(seed: int, epoch: int, loader_gen: torch.Generator) -> None:
    """Seed every RNG from (seed, epoch) alone, so an epoch draws the same wherever it starts."""
    digest = hashlib.sha256(f"p2p-train:{seed}:{epoch}".encode()).digest()
    s = int.from_bytes(digest[:8], "little") >> 1
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    loader_gen.manual_seed(s)


def _seed_worker(worker_id: int) -> None:
    """DataLoader workers: seed numpy and random from torch's per-worker seed."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def _named(values: torch.Tensor) -> dict[str, float]:
    return dict(zip(LOSS_NAMES, values.tolist(), strict=True))


def _train_epoch(
    run: Pix2Pix,
    loader: DataLoader[Sample],
    epoch: int,
    epochs: int,
    lam: float,
    progress: Callable[[TrainProgress], None] | None,
    adversarial: bool = True,
    ema_epochs: float = 0.0,
) -> dict[str, float]:
    """Step through one epoch (L1 only when not `adversarial`), moving the weight average
    after every step; returns the mean losses."""
    run.g.train()
    run.d.train()
    sums = torch.zeros(len(LOSS_NAMES), device=run.device)
    steps, last_report = len(loader), 0.0
    decay = max(0.0, 1.0 - 1.0 / (ema_epochs * steps)) if ema_epochs > 0 else 0.0
    for step, batch in enumerate(loader, 1):
        x, y, valid = run.to_device(*batch)
        sums += train_step(run, x, y, valid, lam, adversarial)
        run.update_ema(decay)
        now = time.monotonic()
        if progress and (step in (1, steps) or now - last_report >= PROGRESS_INTERVAL_S):
            last_report = now
            progress(TrainProgress(epoch, epochs, step, steps, _named(sums / step)))
    return _named(distributed.mean_across_ranks(sums / max(steps, 1)))


@torch.no_grad()
def _validate(run: Pix2Pix, loader: DataLoader[Sample], stats: BandStats) -> dict[str, Any]:
    """Validation metrics in target units (eval mode: BatchNorm running stats, no dropout) of
    the generator that would be bundled (`Pix2Pix.g_eval`)."""
    generator = run.g_eval.eval()

    def translate(x: torch.Tensor) -> torch.Tensor:
        with run.autocast():
            fake: torch.Tensor = generator(run.to_device(x)[0])
        return fake

    return score_batches(loader, translate, stats)


@torch.no_grad()
def recompute_batchnorm(run: Pix2Pix, chips: Dataset[Sample], batch_size: int) -> None:
    """Replace the generator's BatchNorm running statistics by exact ones: the plain average
    over every training chip of the batch statistics the current weights produce.

    Running averages (momentum 0.1) over a few small batches lag the weights and are noisy, and
    eval-mode inference uses them everywhere; measured on Landsat (benchmarks/quality.py) they
    cost more than the model gained. Dropout stays off, as at inference. Deterministic: chips
    in order, no RNG drawn, so an exact resume still holds.
    """
    generator = run.g_eval
    norms = [m for m in generator.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if not norms:
        return
    generator.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the passes below
        m.train()
    for x, _, _ in DataLoader(chips, batch_size=batch_size):
        with run.autocast():
            generator(run.to_device(x)[0])
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    generator.eval()


@torch.no_grad()
def _preview(run: Pix2Pix, val_set: Dataset[Sample], chips: int, path: Path) -> None:
    """Write source | generated | target | error for the first `chips` validation chips."""
    samples = [val_set[i] for i in range(min(chips, len(cast(Sized, val_set))))]
    if not samples:
        return
    generator = run.g_eval.eval()
    x = run.to_device(torch.stack([s[0] for s in samples]))[0]
    with run.autocast():
        fake = generator(x).float().cpu()
    write_preview(path, comparison_rows(samples, fake))


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
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
        worker_init_fn=_seed_worker,
        **common,
    )
    if val_set is None or len(cast(Sized, val_set)) == 0:
        return loader, None
    return loader, DataLoader(val_set, batch_size=cfg.batch_size, **common)


def _run_epoch(
    run: Pix2Pix,
    epoch: int,
    total: int,
    loader: DataLoader[Sample],
    val_loader: DataLoader[Sample] | None,
    val_set: Dataset[Sample] | None,
    cfg: TrainConfig,
    out_dir: Path,
    target_stats: BandStats,
    progress: Callable[[TrainProgress], None] | None,
    best: Best,
) -> tuple[dict[str, Any], Path, Best]:
    """Train, validate, preview, log and checkpoint one epoch (with the best generator so far).

    Returns:
        (validation metrics, checkpoint, best epoch so far).
    """
    t0 = time.monotonic()
    _seed_epoch(cfg.seed, epoch, run.loader_gen)
    cast(DistributedSampler[Sample], loader.sampler).set_epoch(epoch)
    set_epoch = getattr(loader.dataset, "set_epoch", None)
    if callable(set_epoch):  # datasets that draw augmentations per epoch (ChipDataset)
        set_epoch(epoch)
    lr = run.opt_g.param_groups[0]["lr"]
    adversarial = epoch > cfg.warmup_epochs
    losses = _train_epoch(
        run, loader, epoch, total, cfg.lambda_l1, progress, adversarial, cfg.ema_epochs
    )
    run.sched_g.step()
    run.sched_d.step()
    if cfg.bn_stats == "recompute":
        recompute_batchnorm(run, loader.dataset, cfg.batch_size)
    metrics: dict[str, Any] = {}
    if not distributed.current().main:  # rank 0 validates and writes; the others go on
        return metrics, checkpoint_path(out_dir / "checkpoints", epoch), best
    if val_loader is not None and val_set is not None:
        metrics = _validate(run, val_loader, target_stats)
        if cfg.preview_chips:
            preview = out_dir / "previews" / f"epoch_{epoch:04d}.png"
            _preview(run, val_set, cfg.preview_chips, preview)
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
        total,
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
    progress: Callable[[TrainProgress], None] | None = None,
    linear_init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> TrainResult:
    """Train Pix2Pix, resuming from the newest complete checkpoint in `out_dir`.

    Each checkpoint also holds the generator of the epoch with the lowest validation MAE so
    far, so `keep: best` survives a resume.

    Writes `out_dir/checkpoints/epoch_NNNN.pt` (newest 2 kept), `metrics.jsonl` (one line per
    epoch: losses, lr, validation MAE/RMSE/PSNR/SSIM in target units, seconds) and
    `previews/epoch_NNNN.png` (source | generated | target of the first validation chips).

    Args:
        train_set: Yields `(source (Cs, H, W), target (Ct, H, W), valid (1, H, W))`, sources and
            targets float32 normalized to [-1, 1]; it does its own augmentation.
        val_set: The same without augmentation, or None (no metrics, no previews).
        model_cfg: Architecture.
        cfg: Loop settings.
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
    run = build_pix2pix(model_cfg, cfg, in_ch, out_ch, device, linear_init=linear_init)
    distributed.wrap(run)  # data-parallel when launched as one of several ranks
    out_dir.mkdir(parents=True, exist_ok=True)
    start, metrics, ckpt, best = _resume(run, out_dir)
    loader, val_loader = _loaders(run, train_set, val_set, cfg)
    total = cfg.epochs + cfg.epochs_decay
    log.info("training epochs %d..%d on %s (%s)", start + 1, total, device, run.amp_dtype)
    for epoch in range(start + 1, total + 1):
        metrics, ckpt, best = _run_epoch(
            run,
            epoch,
            total,
            loader,
            val_loader,
            val_set,
            cfg,
            out_dir,
            target_stats,
            progress,
            best,
        )
    if ckpt is None:  # zero epochs: keep the initial weights so a bundle can still be written
        ckpt = checkpoint_path(out_dir / "checkpoints", 0)
        if distributed.current().main:
            ckpt = save_checkpoint(out_dir / "checkpoints", 0, _state(run, metrics, best))
    distributed.barrier()  # rank 0's files are complete before any rank returns
    done = max(start, total)
    if cfg.keep == "best" and best is not None:
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


def load_generator(
    checkpoint: Path,
    model_cfg: ModelConfig,
    in_channels: int,
    out_channels: int,
    device: str | torch.device = "cpu",
    best: bool = False,
) -> UNetGenerator:
    """The generator of a training checkpoint, in eval mode.

    Args:
        checkpoint: A training checkpoint.
        model_cfg: Its architecture.
        in_channels: Source bands.
        out_channels: Target bands.
        device: Where to put it.
        best: The generator of the best validation epoch held in the checkpoint (the
            checkpoint's own when it holds none).

    Raises:
        CheckpointError: The file cannot be read or holds a different architecture.
    """
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        g = build_generator(model_cfg, in_channels, out_channels)
        kept = state.get("best") if best else None
        last = state.get("generator_ema", state["generator"])  # the average, when trained with one
        g.load_state_dict(kept["generator"] if kept else last)
    except Exception as exc:
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(checkpoint, f"cannot load the generator ({problem})") from None
    return g.to(device).eval()
