"""One epoch of Pix2Pix training and what is measured at its end (torch and numpy only).

`train_epoch` steps through the shuffled chips (`p2p.model.pix2pix.train_step`), `validate`
scores the generator that would be bundled in target units, `recompute_batchnorm` replaces
BatchNorm's running statistics by exact ones over the training chips, and `write_epoch_preview`
draws the first validation chips. `seed_epoch` reseeds every RNG from (seed, epoch) alone, which
is what makes a resumed run bit-identical (`p2p.model.training`).
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import p2p.model.distributed as distributed
from p2p.bands.normalization import BandStats
from p2p.core.errors import TrainingDiverged
from p2p.core.threads import apply_budget, loader_worker_budget
from p2p.model.metrics import score_batches
from p2p.model.pix2pix import LOSS_NAMES, Pix2Pix, StepOptions, train_step
from p2p.model.preview import comparison_rows, write_preview

if TYPE_CHECKING:
    from p2p.core.config import TrainConfig

Sample = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
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
class LoopOptions:
    """The settings the training loop reads, as one value handed down the loop (`train` →
    epoch → step) instead of a chain of positional arguments.

    Attributes:
        epochs: Epochs in all, the decay epochs included.
        lambda_l1: λ, the weight of the L1 term.
        warmup_epochs: First epochs trained on L1 alone.
        ema_epochs: Horizon of the weight average in epochs (0: none).
        batch_size: Chips per step.
        seed: Seed of every RNG, per epoch.
        bn_stats: "recompute" (exact BatchNorm statistics before validation) or "running".
        preview_chips: Validation chips drawn in each epoch's preview (0: none).
        keep: "best" or "last" generator bundled.
    """

    epochs: int
    lambda_l1: float = 100.0
    warmup_epochs: int = 0
    ema_epochs: float = 0.0
    batch_size: int = 1
    seed: int = 0
    bn_stats: str = "recompute"
    preview_chips: int = 0
    keep: str = "best"

    @classmethod
    def of(cls, cfg: TrainConfig) -> LoopOptions:
        """The options of a `TrainConfig` (or any object with its fields)."""
        return cls(
            epochs=cfg.epochs + cfg.epochs_decay,
            lambda_l1=cfg.lambda_l1,
            warmup_epochs=cfg.warmup_epochs,
            ema_epochs=cfg.ema_epochs,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            bn_stats=cfg.bn_stats,
            preview_chips=cfg.preview_chips,
            keep=cfg.keep,
        )

    def step(self, epoch: int) -> StepOptions:
        """What each step of `epoch` (1-based) runs with: adversarial after the warm-up."""
        return StepOptions(lambda_l1=self.lambda_l1, adversarial=epoch > self.warmup_epochs)


def seed_epoch(seed: int, epoch: int, loader_gen: torch.Generator) -> None:
    """Seed every RNG from (seed, epoch) alone, so an epoch draws the same wherever it starts."""
    digest = hashlib.sha256(f"p2p-train:{seed}:{epoch}".encode()).digest()
    s = int.from_bytes(digest[:8], "little") >> 1
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    loader_gen.manual_seed(s)


def seed_worker(worker_id: int) -> None:
    """DataLoader workers: seed numpy and random from torch's per-worker seed; compute with
    one thread (torch's and GDAL's), the training process keeps the budget."""
    apply_budget(loader_worker_budget(), hand_down=False)
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def named_losses(values: torch.Tensor) -> dict[str, float]:
    return dict(zip(LOSS_NAMES, values.tolist(), strict=True))


class Divergence:
    """The first step of an epoch whose losses were not finite, kept on the device (no sync
    per step); `check` raises once it is known, at the next progress report or epoch end."""

    def __init__(self, device: torch.device) -> None:
        self.step = torch.zeros((), dtype=torch.long, device=device)  # 0: none yet
        self.which = torch.zeros(len(LOSS_NAMES), dtype=torch.bool, device=device)

    def note(self, step: int, losses: torch.Tensor) -> None:
        """Remember `step` when it is the first whose `losses` are not all finite."""
        bad = ~torch.isfinite(losses)
        first = bad.any() & (self.step == 0)
        self.step.copy_(torch.where(first, step, self.step))
        self.which.copy_(torch.where(first, bad, self.which))

    def check(self, epoch: int) -> None:
        """Raise `TrainingDiverged` naming the epoch, step and losses once one was noted."""
        step = int(self.step)
        if step:
            names = [n for n, bad in zip(LOSS_NAMES, self.which.tolist(), strict=True) if bad]
            raise TrainingDiverged(
                "train",
                f"epoch {epoch}, step {step}: {', '.join(names)} not finite (NaN or Inf); "
                f"stopped before epoch {epoch}'s checkpoint (rerun resumes from the last one; "
                "lower train.lr or check the data)",
            )


def check_weights(run: Pix2Pix, epoch: int) -> None:
    """Raise `TrainingDiverged` when a weight of either network went NaN or infinite."""
    for name, net in (("generator", run.g_eval), ("discriminator", run.d)):
        params = [p.detach() for p in net.parameters()]
        if params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
            raise TrainingDiverged(
                "train",
                f"epoch {epoch}: the {name}'s weights are not finite (NaN or Inf); stopped "
                f"before epoch {epoch}'s checkpoint (rerun resumes from the last one; lower "
                "train.lr or check the data)",
            )


def train_epoch(
    run: Pix2Pix,
    loader: DataLoader[Sample],
    epoch: int,
    options: LoopOptions,
    progress: Callable[[TrainProgress], None] | None = None,
) -> dict[str, float]:
    """Step through epoch `epoch` (L1 only during the warm-up), moving the weight average
    after every step; returns the mean losses.

    Raises:
        TrainingDiverged: a loss or a weight went NaN or infinite.
    """
    run.g.train()
    run.d.train()
    sums = torch.zeros(len(LOSS_NAMES), device=run.device)
    steps, last_report = len(loader), 0.0
    ema, epochs, step_options = options.ema_epochs, options.epochs, options.step(epoch)
    decay = max(0.0, 1.0 - 1.0 / (ema * steps)) if ema > 0 else 0.0
    divergence = Divergence(run.device)
    for step, batch in enumerate(loader, 1):
        x, y, valid = run.to_device(*batch)
        losses = train_step(run, x, y, valid, step_options)
        sums += losses
        divergence.note(step, losses)
        run.update_ema(decay)
        now = time.monotonic()
        if step in (1, steps) or now - last_report >= PROGRESS_INTERVAL_S:
            last_report = now  # (a report syncs the device anyway)
            divergence.check(epoch)
            if progress:
                progress(TrainProgress(epoch, epochs, step, steps, named_losses(sums / step)))
    divergence.check(epoch)
    check_weights(run, epoch)
    return named_losses(distributed.mean_across_ranks(sums / max(steps, 1)))


@torch.no_grad()
def validate(run: Pix2Pix, loader: DataLoader[Sample], stats: BandStats) -> dict[str, Any]:
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
def write_epoch_preview(run: Pix2Pix, val_set: Dataset[Sample], chips: int, path: Path) -> None:
    """Write source | generated | target | error for the first `chips` validation chips."""
    samples = [val_set[i] for i in range(min(chips, len(cast(Sized, val_set))))]
    if not samples:
        return
    generator = run.g_eval.eval()
    x = run.to_device(torch.stack([s[0] for s in samples]))[0]
    with run.autocast():
        fake = generator(x).float().cpu()
    write_preview(path, comparison_rows(samples, fake))
