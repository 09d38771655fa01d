"""Paired augmentation: the same random flip/rotation applied to source, target and mask.

The eight symmetries of the square (rot90 by k quarter turns, optionally after a horizontal
flip) keep pixels on the grid, so no resampling blurs the chips and nodata masks stay exact.
Draws come from a torch generator (the global one by default), so the training loop's
per-epoch seeding makes them reproducible, in DataLoader workers too.
"""

from __future__ import annotations

import torch

#: `(source (Cs, H, W), target (Ct, H, W), valid (1, H, W))`.
Chips = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Apply symmetry `k` (0 ≤ k < 8) of the square to the last two axes.

    k % 4 is the number of quarter turns; k ≥ 4 flips horizontally first. k = 0 is identity.

    Args:
        x: `(..., H, W)` tensor (square chips keep their shape; rotations swap H and W).
        k: Which of the 8 symmetries.
    """
    if not 0 <= k < 8:
        raise ValueError(f"k must be in [0, 8), got {k}")
    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k % 4, dims=(-2, -1)) if k % 4 else x


def undo_dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Invert `dihedral`: ``undo_dihedral(dihedral(x, k), k)`` is `x`.

    Args:
        x: `(..., H, W)` tensor.
        k: The symmetry that was applied (0 ≤ k < 8).
    """
    if not 0 <= k < 8:
        raise ValueError(f"k must be in [0, 8), got {k}")
    x = torch.rot90(x, -(k % 4), dims=(-2, -1)) if k % 4 else x
    return torch.flip(x, dims=(-1,)) if k >= 4 else x


def augment_pair(
    source: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply one random symmetry of the square to a chip triple, the same to all three.

    Args:
        source: `(Cs, H, W)` source chip.
        target: `(Ct, H, W)` target chip.
        valid: `(1, H, W)` validity mask.
        generator: torch generator to draw from; None uses the global torch RNG.

    Returns:
        The transformed `(source, target, valid)`, contiguous.
    """
    k = int(torch.randint(8, (1,), generator=generator).item())
    return dihedral_pair((source, target, valid), k)


def dihedral_pair(chips: Chips, k: int) -> Chips:
    """Apply symmetry `k` to a `(source, target, valid)` triple alike; contiguous results.

    The one augmentation recipe: `augment_pair` draws `k` from a torch generator, the chip
    datasets from a seed per (seed, epoch, index).
    """
    source, target, valid = (dihedral(t, k).contiguous() for t in chips)
    return source, target, valid
