"""Masked image-quality metrics (MAE, RMSE, PSNR, SSIM) per band, in target units.

`MetricAccumulator` keeps running sums, so metrics over many batches (validation) or many
windows of a scene (evaluation) aggregate exactly as if computed on all pixels at once. Only
pixels valid in both prediction and reference count; SSIM counts only pixels whose whole
11x11 window is valid. Needs only torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from p2p.bands.normalization import BandStats, denormalize

#: Side of the SSIM Gaussian window and its standard deviation (Wang et al., 2004).
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
#: MSE floor, as a fraction of range^2: caps PSNR at 100 dB so a perfect match stays finite.
PSNR_MSE_FLOOR = 1e-10


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Normalized 2-D Gaussian window.

    Returns:
        `(size, size)` float64 tensor summing to 1.
    """
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim_map(pred: torch.Tensor, target: torch.Tensor, data_range: torch.Tensor) -> torch.Tensor:
    """SSIM at every pixel whose 11x11 window lies inside the image ("valid" convolution).

    Args:
        pred: `(N, C, H, W)` float64.
        target: `(N, C, H, W)` float64.
        data_range: `(C,)` float64, the value span of each band.

    Returns:
        `(N, C, H - 10, W - 10)` float64 SSIM values; empty when H or W < 11.
    """
    channels = pred.shape[1]
    win = gaussian_window().to(pred.device)[None, None].expand(channels, 1, -1, -1)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, win, groups=channels)

    c1 = ((0.01 * data_range) ** 2).view(1, -1, 1, 1)
    c2 = ((0.03 * data_range) ** 2).view(1, -1, 1, 1)
    mu_x, mu_y = blur(pred), blur(target)
    var_x = blur(pred * pred) - mu_x**2
    var_y = blur(target * target) - mu_y**2
    cov = blur(pred * target) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return num / den


def full_window_mask(valid: torch.Tensor, size: int = SSIM_WINDOW) -> torch.Tensor:
    """Which window positions of `ssim_map` see only valid pixels (the mask, eroded).

    Args:
        valid: `(N, 1, H, W)` bool.

    Returns:
        `(N, 1, H - size + 1, W - size + 1)` bool.
    """
    ones = torch.ones(1, 1, size, size, dtype=torch.float32, device=valid.device)
    counts = F.conv2d(valid.float(), ones)
    return counts > size * size - 0.5


class MetricAccumulator:
    """Running per-band MAE, RMSE, PSNR and SSIM over the valid pixels of many batches.

    PSNR is ``20·log10(range) − 10·log10(MSE)`` per band with MSE floored at
    ``PSNR_MSE_FLOOR · range²`` (so it is at most 100 dB, never inf). SSIM uses an 11x11
    Gaussian window (σ = 1.5), C1 = (0.01·range)², C2 = (0.03·range)², and is the mean of the
    SSIM map over pixels whose whole window is valid. Windows never cross batch items, so a
    scene evaluated in tiles counts SSIM only inside tiles.

    Args:
        data_range: One value span per band, in target units (e.g. high − low of the
            target statistics, or 65535 for full-range uint16).
    """

    def __init__(self, data_range: Sequence[float]) -> None:
        if not data_range or any(not r > 0 for r in data_range):
            raise ValueError(f"data_range must hold one positive span per band, got {data_range}")
        self.data_range = torch.tensor([float(r) for r in data_range], dtype=torch.float64)
        bands = len(data_range)
        self._count = torch.zeros(bands, dtype=torch.float64)
        self._abs = torch.zeros(bands, dtype=torch.float64)
        self._sq = torch.zeros(bands, dtype=torch.float64)
        self._ssim = torch.zeros(bands, dtype=torch.float64)
        self._ssim_count = torch.zeros(bands, dtype=torch.float64)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> None:
        """Add one batch.

        Args:
            pred: `(N, C, H, W)` prediction in target units.
            target: `(N, C, H, W)` reference in target units.
            valid: `(N, 1, H, W)` bool (or 0/1), true where both are valid. Values at invalid
                pixels are ignored, NaN included.
        """
        bands = self.data_range.numel()
        if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != bands:
            raise ValueError(
                f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be "
                f"(N, {bands}, H, W)"
            )
        if valid.shape != (pred.shape[0], 1, *pred.shape[2:]):
            raise ValueError(f"valid {tuple(valid.shape)} must be (N, 1, H, W) like pred")
        mask = valid.bool()
        zero = torch.zeros((), dtype=torch.float64, device=pred.device)
        p = torch.where(mask, pred.double(), zero)
        t = torch.where(mask, target.double(), zero)
        diff = p - t
        self._count += mask.sum().double().cpu().expand(bands)
        self._abs += diff.abs().sum(dim=(0, 2, 3)).cpu()
        self._sq += (diff * diff).sum(dim=(0, 2, 3)).cpu()
        if min(pred.shape[-2:]) >= SSIM_WINDOW:
            window_ok = full_window_mask(mask)
            smap = ssim_map(p, t, self.data_range.to(pred.device))
            self._ssim += torch.where(window_ok, smap, zero).sum(dim=(0, 2, 3)).cpu()
            self._ssim_count += window_ok.sum().double().cpu().expand(bands)

    def compute(self) -> dict[str, Any]:
        """Metrics so far.

        Returns:
            ``{"bands": [{"mae", "rmse", "psnr", "ssim", "count"}, ...], "overall": {"mae",
            "rmse", "psnr", "ssim"}}``. ``count`` is the number of valid pixels. Overall MAE
            and RMSE pool all bands' pixels; overall PSNR and SSIM are means over bands. A
            metric with no pixels to stand on is None (e.g. SSIM when no window is wholly
            valid).
        """
        bands: list[dict[str, Any]] = []
        for b in range(self.data_range.numel()):
            n = float(self._count[b])
            rng = float(self.data_range[b])
            mse = float(self._sq[b]) / n if n else None
            entry: dict[str, Any] = {
                "mae": float(self._abs[b]) / n if n else None,
                "rmse": math.sqrt(mse) if mse is not None else None,
                "psnr": _psnr(mse, rng),
                "ssim": float(self._ssim[b] / self._ssim_count[b]) if self._ssim_count[b] else None,
                "count": int(n),
            }
            bands.append(entry)
        return {"bands": bands, "overall": self._overall(bands)}

    def _overall(self, bands: list[dict[str, Any]]) -> dict[str, Any]:
        n = float(self._count.sum())
        psnrs = [b["psnr"] for b in bands if b["psnr"] is not None]
        ssims = [b["ssim"] for b in bands if b["ssim"] is not None]
        return {
            "mae": float(self._abs.sum()) / n if n else None,
            "rmse": math.sqrt(float(self._sq.sum()) / n) if n else None,
            "psnr": sum(psnrs) / len(psnrs) if psnrs else None,
            "ssim": sum(ssims) / len(ssims) if ssims else None,
        }


def _psnr(mse: float | None, data_range: float) -> float | None:
    if mse is None:
        return None
    floor = PSNR_MSE_FLOOR * data_range**2
    return 20 * math.log10(data_range) - 10 * math.log10(max(mse, floor))


@torch.no_grad()
def score_batches(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    translate: Callable[[torch.Tensor], torch.Tensor],
    stats: BandStats,
) -> dict[str, Any]:
    """Metrics of a generator over normalized chip batches, in target units.

    The one recipe behind training's per-epoch validation and the evaluate stage: the data
    range of each band is the span of the target statistics, generated and target chips are
    denormalized, and only valid pixels count.

    Args:
        batches: ``(source (N, Cs, S, S), target (N, Ct, S, S), valid (N, 1, S, S))``,
            normalized to [-1, 1].
        translate: source batch → generated ``(N, Ct, S, S)`` (on any device).
        stats: The target's normalization statistics.

    Returns:
        `MetricAccumulator.compute()`: per-band and overall MAE, RMSE, PSNR (dB), SSIM.
    """
    acc = MetricAccumulator(stats.spans())
    for source, target, valid in batches:
        fake = translate(source).float()
        target, valid = target.to(fake.device, torch.float32), valid.to(fake.device)
        acc.update(denormalize(fake, stats), denormalize(target, stats), valid > 0.5)
    return acc.compute()
