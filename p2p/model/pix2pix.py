"""One Pix2Pix training setup and its step (Isola et al., 2017), checkable against the paper.

`Pix2Pix` holds what a step touches: generator, discriminator, their Adam optimizers and LR
schedulers, the gradient scaler and the device/precision choice. `train_step` is the
reference's `optimize_parameters`. The epoch loop, validation and checkpoints are in
`p2p.model.training`; `benchmarks/train_step.py` times this same step. Needs only torch.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from p2p.core.errors import ConfigError
from p2p.model.losses import discriminator_loss, generator_loss, masked_l1
from p2p.model.networks import PatchGANDiscriminator, UNetGenerator, build_generator, init_weights

if TYPE_CHECKING:
    from p2p.core.config import ModelConfig, TrainConfig

LOSS_NAMES = ("loss_d", "loss_g", "loss_g_gan", "loss_g_l1")


@dataclass(frozen=True)
class StepOptions:
    """What one step needs besides the networks and the batch.

    Attributes:
        lambda_l1: λ, the weight of the L1 term (`TrainConfig.lambda_l1`).
        adversarial: False for an L1-only warm-up step (no discriminator).
    """

    lambda_l1: float = 100.0
    adversarial: bool = True


@dataclass
class Pix2Pix:
    """Everything a step touches: networks, optimizers, schedulers, scaler, device settings.

    On CUDA the networks and batches are channels_last and the step runs under autocast
    (`amp_dtype`); on CPU everything is plain fp32 unless asked otherwise (torch runs bf16 and
    fp16 autocast, the fp16 GradScaler, channels_last and fused Adam on CPU too, which is how
    the tests exercise the GPU code path without a GPU).
    """

    g: UNetGenerator
    d: PatchGANDiscriminator
    opt_g: torch.optim.Adam
    opt_d: torch.optim.Adam
    sched_g: LambdaLR
    sched_d: LambdaLR
    scaler: torch.amp.GradScaler
    device: torch.device
    amp_dtype: torch.dtype | None  # None: plain fp32
    channels_last: bool  # NHWC networks and batches (Tensor Cores want it)
    loader_gen: torch.Generator
    # what the step calls when data-parallel: DDP wrappers of g and d (p2p.model.distributed)
    g_step: torch.nn.Module | None = None
    d_step: torch.nn.Module | None = None
    # the moving average of g's weights (`TrainConfig.ema_epochs`), or None
    g_ema: UNetGenerator | None = None

    @property
    def g_eval(self) -> UNetGenerator:
        """The generator that is validated, kept and bundled: the average when there is one."""
        return self.g if self.g_ema is None else self.g_ema

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        """Move the average toward g's weights (`decay` of the old kept); copy g's buffers."""
        if self.g_ema is None:
            return
        for avg, p in zip(self.g_ema.parameters(), self.g.parameters(), strict=True):
            avg.lerp_(p.detach(), 1.0 - decay)
        for kept, b in zip(self.g_ema.buffers(), self.g.buffers(), strict=True):
            kept.copy_(b)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast to `amp_dtype`, or nothing for fp32."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_device(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """Copy a batch to the device as float32 (asynchronously from pinned memory)."""
        fmt = torch.channels_last if self.channels_last else torch.preserve_format
        return [
            t.to(self.device, torch.float32, non_blocking=True, memory_format=fmt) for t in tensors
        ]

    def state_dict(self) -> dict[str, Any]:
        """Networks, optimizers, schedulers and scaler, for a checkpoint."""
        return {
            "generator": self.g.state_dict(),
            "discriminator": self.d.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "sched_d": self.sched_d.state_dict(),
            "scaler": self.scaler.state_dict(),
            **({} if self.g_ema is None else {"generator_ema": self.g_ema.state_dict()}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of `state_dict`."""
        self.g.load_state_dict(state["generator"])
        self.d.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        self.scaler.load_state_dict(state["scaler"])
        if self.g_ema is not None:
            self.g_ema.load_state_dict(state["generator_ema"])


def train_step(
    run: Pix2Pix,
    x: torch.Tensor,
    y: torch.Tensor,
    valid: torch.Tensor,
    options: StepOptions = StepOptions(),
) -> torch.Tensor:
    """One Pix2Pix iteration (the reference's `optimize_parameters`): D step, then G step.

    With `options.adversarial` false (an L1-only warm-up step) D is left alone and G
    minimizes λ·L1.

    Args:
        run: Networks and optimizers.
        x: `(N, Cs, H, W)` normalized source on the device.
        y: `(N, Ct, H, W)` normalized target.
        valid: `(N, 1, H, W)` 1 where source and target are both valid.
        options: λ and whether the step is adversarial.

    Returns:
        `(4,)` detached losses in `LOSS_NAMES` order (the GAN terms 0 in an L1-only step).
    """
    lam = options.lambda_l1
    g, d = run.g, run.d
    g_step = g if run.g_step is None else run.g_step  # DDP averages gradients across ranks
    d_step = d if run.d_step is None else run.d_step
    with run.autocast():
        fake = g_step(x)  # G(x), reused by both steps
    if not options.adversarial:
        run.opt_g.zero_grad(set_to_none=True)
        with run.autocast():
            l1 = masked_l1(fake, y, valid)
        run.scaler.scale(lam * l1).backward()  # type: ignore[no-untyped-call]
        run.scaler.step(run.opt_g)
        run.scaler.update()
        zero = torch.zeros((), device=l1.device)
        return torch.stack([zero, lam * l1.float(), zero, l1.float()]).detach()
    # D step: minimize ½·[BCE(D(x, G(x)), 0) + BCE(D(x, y), 1)]; G gets no gradient (detach)
    d.requires_grad_(True)
    run.opt_d.zero_grad(set_to_none=True)
    with run.autocast():
        fake_logits = d_step(x, fake.detach())
        real_logits = d_step(x, y)
        loss_d = discriminator_loss(real_logits, fake_logits)
    run.scaler.scale(loss_d).backward()  # type: ignore[no-untyped-call]
    run.scaler.step(run.opt_d)
    # G step: fool the updated D and stay near y, L1 over valid pixels; D's weights stay put
    # (the plain D: no gradient of its own to average)
    d.requires_grad_(False)
    run.opt_g.zero_grad(set_to_none=True)
    with run.autocast():
        loss_g, gan, l1 = generator_loss(d(x, fake), fake, y, valid, lam)
    run.scaler.scale(loss_g).backward()  # type: ignore[no-untyped-call]
    run.scaler.step(run.opt_g)
    run.scaler.update()
    return torch.stack([loss_d, loss_g, gan, l1]).detach()


def lr_factor(epochs: int, epochs_decay: int) -> Callable[[int], float]:
    """The reference's schedule: 1 for `epochs`, then linearly toward 0 over `epochs_decay`.

    The factor for 0-based epoch e is ``1 − max(0, e + 1 − epochs) / (epochs_decay + 1)``, so
    the last decay epoch runs at 1/(epochs_decay + 1) of the rate and the next would run at 0.
    """

    def factor(e: int) -> float:
        return 1.0 - max(0, e + 1 - epochs) / float(epochs_decay + 1)

    return factor


def select_device(name: str, field: str = "train.device") -> torch.device:
    """`auto` → CUDA when present, else CPU; `cuda` without a GPU is a ConfigError on `field`."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(field, "cuda was asked for but no CUDA device is available")
    use_cuda = name == "cuda" or (name == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if use_cuda else "cpu")


def select_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: `auto` → bf16 on CUDA where supported, else fp16; fp32 (None) on CPU."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def build_pix2pix(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    in_ch: int,
    out_ch: int,
    device: torch.device,
    optimized: bool = True,
    linear_init: tuple[torch.Tensor, torch.Tensor] | None = None,
    fast_layout: bool | None = None,
) -> Pix2Pix:
    """Fresh, seeded networks (N(0, 0.02) init), Adam optimizers, schedulers and scaler.

    Args:
        model_cfg: Architecture.
        cfg: Learning rate, betas, schedule, precision and seed.
        in_ch: Source bands.
        out_ch: Target bands.
        device: Where to train.
        optimized: Autocast as `cfg.precision` says, plus `fast_layout`. False gives plain
            fp32 eager everywhere (the benchmark's baseline).
        linear_init: With `model_cfg.linear_anchor`, the start of the linear path:
            `(out_ch, in_ch)` weight and `(out_ch,)` bias in normalized units (zeros if None).
        fast_layout: channels_last networks and batches + fused Adam; None: on CUDA only.
            True on CPU runs the very code a GPU runs (only the device differs).
    """
    torch.manual_seed(cfg.seed)
    m = model_cfg
    g = build_generator(m, in_ch, out_ch)
    d = PatchGANDiscriminator(in_ch + out_ch, m.ndf, m.n_layers_d, m.norm)
    init_weights(g)
    init_weights(d)
    if g.linear is not None:
        w, b = linear_init or (torch.zeros(out_ch, in_ch), torch.zeros(out_ch))
        g.anchor_at(w, b)
    cuda_fast = optimized and (device.type == "cuda" if fast_layout is None else fast_layout)
    fmt = torch.channels_last if cuda_fast else torch.contiguous_format
    g.to(device=device, memory_format=fmt)  # type: ignore[call-overload]
    d.to(device=device, memory_format=fmt)  # type: ignore[call-overload]
    # fused Adam: one kernel per step instead of several per parameter
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999), fused=cuda_fast)
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999), fused=cuda_fast)
    rule = lr_factor(cfg.epochs, cfg.epochs_decay)
    amp_dtype = select_precision(cfg.precision, device) if optimized else None
    return Pix2Pix(
        g=g,
        d=d,
        opt_g=opt_g,
        opt_d=opt_d,
        sched_g=LambdaLR(opt_g, rule),
        sched_d=LambdaLR(opt_d, rule),
        scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
        device=device,
        amp_dtype=amp_dtype,
        channels_last=cuda_fast,
        loader_gen=torch.Generator(),
        g_ema=copy.deepcopy(g).requires_grad_(False).eval() if cfg.ema_epochs > 0 else None,
    )
