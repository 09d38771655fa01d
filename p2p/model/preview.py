"""Preview grids of validation chips: one row per chip, source | generated | target.

Encoded as PNG with the standard library (zlib), so training needs no imaging package.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from p2p.core.fsutil import atomic_write_bytes

_GAP = 2  # white pixels between panels


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


def preview_grid(rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> np.ndarray:
    """Tile `(source, generated, target)` chips into one image.

    Args:
        rows: One `(source (Cs, H, W), generated (Ct, H, W), target (Ct, H, W))` per chip, all
            normalized and of one size.

    Returns:
        `(rows·(H+gap), 3·(W+gap), 3)` uint8 on a white background.
    """
    h, w = rows[0][0].shape[-2:]
    grid = np.full((len(rows) * (h + _GAP), 3 * (w + _GAP), 3), 255, dtype=np.uint8)
    for r, panels in enumerate(rows):
        for c, panel in enumerate(panels):
            y, x = r * (h + _GAP), c * (w + _GAP)
            grid[y : y + h, x : x + w] = to_rgb(panel)
    return grid


def encode_png(rgb: np.ndarray) -> bytes:
    """Encode an `(H, W, 3)` uint8 image as PNG (8-bit RGB, no filtering)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def write_preview(path: Path, rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
    """Write the preview grid of `rows` to `path` (PNG) atomically."""
    atomic_write_bytes(path, encode_png(preview_grid(rows)))
