"""Paired augmentation: the same random flip/rotation applied to source, target and mask.

The eight symmetries of the square (`p2p.bands.symmetry`: rot90 by k quarter turns, optionally
after a horizontal flip) keep pixels on the grid, so no resampling blurs the chips and nodata
masks stay exact. Draws come from a torch generator (the global one by default), so the
training loop's per-epoch seeding makes them reproducible, in DataLoader workers too.
"""

from __future__ import annotations

import torch

from p2p.bands.symmetry import dihedral

#: `(source (Cs, H, W), target (Ct, H, W), valid (1, H, W))`.
Chips = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


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
