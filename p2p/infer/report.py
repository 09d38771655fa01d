"""Human-readable reports: metrics tables in Markdown and input | prediction | target pictures."""

from __future__ import annotations

import filecmp
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from p2p.core.fsutil import atomic_path

METRICS = ("mae", "rmse", "psnr", "ssim")


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def metrics_markdown(metrics: dict[str, Any], band_names: Sequence[str] | None = None) -> str:
    """A Markdown table of `MetricAccumulator.compute()` output: one row per band + overall.

    MAE and RMSE are in target units, PSNR in dB, SSIM in [-1, 1].
    """
    if not metrics or "bands" not in metrics:
        return "_no metrics (no validation chips)_"
    lines = ["| band | MAE | RMSE | PSNR (dB) | SSIM |", "|---|---|---|---|---|"]
    for i, band in enumerate(metrics["bands"]):
        name = band.get("name") or (
            band_names[i] if band_names and i < len(band_names) else f"band {i + 1}"
        )
        lines.append(f"| {name} | " + " | ".join(_fmt(band.get(m)) for m in METRICS) + " |")
    overall = metrics.get("overall", {})
    lines.append("| **overall** | " + " | ".join(_fmt(overall.get(m)) for m in METRICS) + " |")
    return "\n".join(lines)


def to_display(data: NDArray[Any], nodata: float | None = None) -> NDArray[np.uint8]:
    """(C, H, W) raster → (H, W, 3) uint8 for a picture: uint8 as is, other types stretched
    between their 2nd and 98th percentiles; one band is shown as grey, bands past 3 dropped."""
    data = data[:3] if data.shape[0] >= 3 else np.repeat(data[:1], 3, axis=0)
    if data.dtype == np.uint8:
        return np.ascontiguousarray(data.transpose(1, 2, 0))
    valid = np.ones(data.shape[1:], bool) if nodata is None else (data != nodata).all(0)
    values = data[:, valid].astype(np.float64)
    low, high = np.percentile(values, [2, 98]) if values.size else (0.0, 1.0)
    scaled = (data.astype(np.float64) - low) / max(high - low, 1e-9) * 255
    return np.clip(scaled, 0, 255).astype(np.uint8).transpose(1, 2, 0)


def read_display(path: str | Path) -> NDArray[np.uint8]:
    """A raster file as an (H, W, 3) uint8 picture."""
    with rasterio.open(path) as src:
        return to_display(src.read(), src.nodata)


def comparison_png(
    path: str | Path, panels: Sequence[tuple[str, NDArray[np.uint8]]], gap: int = 8
) -> None:
    """Write titled (H, W, 3) panels side by side as one PNG, atomically."""
    height = max(p.shape[0] for _, p in panels)
    width = sum(p.shape[1] for _, p in panels) + gap * (len(panels) - 1)
    header = 22
    canvas = Image.new("RGB", (width, height + header), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for title, panel in panels:
        canvas.paste(Image.fromarray(panel), (x, header))
        draw.text((x + 4, 5), title, fill="black")
        x += panel.shape[1] + gap
    with atomic_path(path, ".png") as tmp:
        canvas.save(tmp, format="PNG")


def deliver_file(source: str | Path, output: str | Path) -> bool:
    """Copy `source` to `output` atomically, unless `output` already holds the same bytes.

    Returns:
        True when `output` was written.
    """
    output = Path(output)
    if output.is_file() and filecmp.cmp(source, output, shallow=False):
        return False
    with atomic_path(output, output.suffix) as tmp:
        shutil.copyfile(source, tmp)
    return True
