"""Preview grids of validation chips: one row per chip, source | generated | target (| error).

Encoded as PNG by Pillow (a dependency of p2p), imported only when a preview is written; a
GPU box with only torch and numpy still trains, without previews (one warning says so).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from p2p.core.fsutil import atomic_write_bytes

_GAP = 2  # white pixels between panels
#: Smallest side a chip is drawn at in previews (a 32 px chip is judged at 256 px).
MIN_SIDE = 256

log = logging.getLogger(__name__)


def to_rgb(x: torch.Tensor) -> np.ndarray:
    """Show a normalized chip as 8-bit RGB: the first 3 bands, or band 1 as gray.

    Args:
        x: `(C, H, W)` in [-1, 1].

    Returns:
        `(H, W, 3)` uint8.
    """
    bands = x[:3] if x.shape[0] >= 3 else x[:1].expand(3, -1, -1)
    img = ((bands.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return img.permute(1, 2, 0).cpu().numpy()


def preview_grid(rows: Sequence[Sequence[torch.Tensor]], min_side: int = MIN_SIDE) -> np.ndarray:
    """Tile chips into one image, one row per chip, each chip enlarged by a whole factor
    (nearest neighbour: pixels stay sharp squares) to at least `min_side` pixels.

    Args:
        rows: Per chip the same number of panels, e.g. `(source (Cs, H, W), generated
            (Ct, H, W), target (Ct, H, W))`, all normalized to [-1, 1] and of one size.
        min_side: Smallest side a chip is drawn at.

    Returns:
        `(rows·(k·H+gap), panels·(k·W+gap), 3)` uint8 on a white background, k the factor.
    """
    h, w = rows[0][0].shape[-2:]
    k = max(1, -(-min_side // min(h, w)))
    h, w = h * k, w * k
    count = len(rows[0])
    grid = np.full((len(rows) * (h + _GAP), count * (w + _GAP), 3), 255, dtype=np.uint8)
    for r, panels in enumerate(rows):
        for c, panel in enumerate(panels):
            y, x = r * (h + _GAP), c * (w + _GAP)
            grid[y : y + h, x : x + w] = to_rgb(panel).repeat(k, axis=0).repeat(k, axis=1)
    return grid


def encode_png(rgb: np.ndarray) -> bytes:
    """Encode an `(H, W, 3)` uint8 image as PNG (8-bit RGB)."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def error_panel(generated: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """|generated − target| averaged over bands, as a normalized gray panel (black: no error,
    white: an error of the whole [-1, 1] range); invalid pixels black.

    Returns:
        `(1, H, W)` in [-1, 1].
    """
    err = (generated.float() - target.float()).abs().mean(0, keepdim=True) * (valid > 0.5)
    return (err - 1).clamp(-1, 1)


def comparison_rows(
    samples: Sequence[Sequence[torch.Tensor]], generated: torch.Tensor
) -> list[tuple[torch.Tensor, ...]]:
    """Rows of source | generated | target | error for chips and the model's outputs.

    Args:
        samples: `(source, target, valid)` per chip, normalized.
        generated: `(N, Ct, H, W)` the model's outputs for them.
    """
    return [
        (s[0], g, s[1], error_panel(g, s[1], s[2]))
        for s, g in zip(samples, generated.float().cpu(), strict=True)
    ]


def write_preview(path: Path, rows: Sequence[Sequence[torch.Tensor]]) -> None:
    """Write the preview grid of `rows` to `path` (PNG) atomically; without Pillow, nothing
    (training goes on: a preview is a picture for people, not an artifact anything reads)."""
    try:
        png = encode_png(preview_grid(rows))
    except ModuleNotFoundError as missing:  # Pillow, on a torch-and-numpy-only machine
        log.warning("no preview %s: %s is not installed", path.name, missing.name)
        return
    atomic_write_bytes(path, png)
