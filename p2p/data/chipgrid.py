"""The chip grid of a scene: chip positions, blocks of chips (the unit of work and resume) and
cutting a block's window into its chips."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from rasterio.windows import Window


@dataclass(frozen=True)
class Block:
    """A block of the chip grid: chip rows [row0, row1) x cols [col0, col1) from slot `slot0`."""

    i: int
    j: int
    row0: int
    row1: int
    col0: int
    col1: int
    slot0: int

    @property
    def name(self) -> str:
        """Block id used for its done-marker."""
        return f"{self.i}_{self.j}"


@dataclass(frozen=True)
class ChipGrid:
    """Chip positions over a scene of `height` x `width` pixels."""

    height: int
    width: int
    chip_size: int
    stride: int
    block_chips: int

    @property
    def rows(self) -> int:
        """Chip rows; the last one may reach past the bottom edge."""
        return math.ceil(max(self.height - self.chip_size, 0) / self.stride) + 1

    @property
    def cols(self) -> int:
        """Chip columns; the last one may reach past the right edge."""
        return math.ceil(max(self.width - self.chip_size, 0) / self.stride) + 1

    @property
    def block_rows(self) -> int:
        return math.ceil(self.rows / self.block_chips)

    @property
    def block_cols(self) -> int:
        return math.ceil(self.cols / self.block_chips)

    @property
    def n_slots(self) -> int:
        """Slots in the store: every block owns block_chips² of them."""
        return self.block_rows * self.block_cols * self.block_chips**2

    def blocks(self) -> Iterator[Block]:
        """All blocks, row-major, with their pre-assigned first slot."""
        b = self.block_chips
        for i in range(self.block_rows):
            for j in range(self.block_cols):
                yield Block(
                    i,
                    j,
                    i * b,
                    min((i + 1) * b, self.rows),
                    j * b,
                    min((j + 1) * b, self.cols),
                    (i * self.block_cols + j) * b * b,
                )

    def window(self, block: Block) -> Window:
        """Source pixel window covering all chips of `block` (with the overlap halo)."""
        s, k = self.stride, self.chip_size
        return Window(
            block.col0 * s,
            block.row0 * s,
            (block.col1 - block.col0 - 1) * s + k,
            (block.row1 - block.row0 - 1) * s + k,
        )


def chip_views(
    pixels: np.ndarray, rows: int, cols: int, size: int, stride: int
) -> list[np.ndarray]:
    """A block's chips as views of its window (no copy), in row-major order.

    Args:
        pixels: ``(..., H, W)`` window covering ``rows`` x ``cols`` chips, ``H = (rows - 1) *
            stride + size`` (likewise ``W``).
        rows, cols: Chips down and across the window.
        size, stride: Chip side and step in pixels (``stride < size`` overlaps chips).

    Returns:
        ``rows * cols`` views of shape ``(..., size, size)``.
    """
    return [
        pixels[..., r * stride : r * stride + size, c * stride : c * stride + size]
        for r in range(rows)
        for c in range(cols)
    ]
