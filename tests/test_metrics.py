"""MetricAccumulator against straightforward numpy reference implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from p2p.model.metrics import MetricAccumulator


def _np_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    g /= g.sum()
    return np.outer(g, g)


def _np_ssim(a: np.ndarray, b: np.ndarray, valid: np.ndarray, rng: float) -> tuple[float, int]:
    """Sum and count of SSIM over windows that lie wholly on valid pixels (explicit loops)."""
    w = _np_window()
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    total, count = 0.0, 0
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            if not valid[i : i + 11, j : j + 11].all():
                continue
            pa, pb = a[i : i + 11, j : j + 11], b[i : i + 11, j : j + 11]
            mx, my = (w * pa).sum(), (w * pb).sum()
            vx = (w * (pa - mx) ** 2).sum()
            vy = (w * (pb - my) ** 2).sum()
            cov = (w * (pa - mx) * (pb - my)).sum()
            total += (2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
            count += 1
    return total, count


def _batch(seed: int, n: int = 2, c: int = 2, h: int = 24, w: int = 20):
    g = np.random.default_rng(seed)
    target = g.uniform(0, 1000, (n, c, h, w))
    pred = target + g.normal(0, 40, (n, c, h, w))
    valid = np.ones((n, 1, h, w), bool)
    valid[0, 0, :3, :] = False  # a nodata border ...
    valid[1, 0, 5:8, 12:14] = False  # ... and a hole
    pred[~np.broadcast_to(valid, pred.shape)] = np.nan  # must be ignored, NaN included
    return pred, target, valid


def test_metrics_match_numpy_reference_over_batches() -> None:
    ranges = [1000.0, 800.0]
    acc = MetricAccumulator(ranges)
    batches = [_batch(0), _batch(1)]
    for pred, target, valid in batches:
        acc.update(torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(valid))
    out = acc.compute()
    for band, rng in enumerate(ranges):
        diffs, ssim_sum, ssim_n = [], 0.0, 0
        for pred, target, valid in batches:
            for k in range(pred.shape[0]):
                m = valid[k, 0]
                diffs.append((pred[k, band] - target[k, band])[m])
                s, c = _np_ssim(np.where(m, pred[k, band], 0), target[k, band], m, rng)
                ssim_sum, ssim_n = ssim_sum + s, ssim_n + c
        d = np.concatenate(diffs)
        mse = float(np.mean(d**2))
        got = out["bands"][band]
        assert got["count"] == d.size
        assert got["mae"] == pytest.approx(np.mean(np.abs(d)), rel=1e-9)
        assert got["rmse"] == pytest.approx(math.sqrt(mse), rel=1e-9)
        assert got["psnr"] == pytest.approx(20 * math.log10(rng) - 10 * math.log10(mse), rel=1e-9)
        assert got["ssim"] == pytest.approx(ssim_sum / ssim_n, rel=1e-9)
        assert 0.0 < got["ssim"] < 1.0
    assert out["overall"]["psnr"] == pytest.approx(
        np.mean([b["psnr"] for b in out["bands"]]), rel=1e-12
    )


def test_identical_images_give_ssim_one_and_capped_psnr() -> None:
    x = torch.rand(1, 1, 16, 16, dtype=torch.float64) * 500
    acc = MetricAccumulator([500.0])
    acc.update(x, x.clone(), torch.ones(1, 1, 16, 16, dtype=torch.bool))
    band = acc.compute()["bands"][0]
    assert band["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert band["mae"] == 0.0
    assert band["psnr"] == pytest.approx(100.0)  # the documented MSE floor, not inf


def test_no_valid_pixels_gives_none_not_nan() -> None:
    acc = MetricAccumulator([1.0])
    acc.update(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
    band = acc.compute()["bands"][0]
    assert band["count"] == 0
    assert band["mae"] is None and band["ssim"] is None and band["psnr"] is None


def test_shape_mismatch_is_refused() -> None:
    acc = MetricAccumulator([1.0, 1.0])
    with pytest.raises(ValueError, match="must both be"):
        acc.update(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), torch.ones(1, 1, 8, 8))
