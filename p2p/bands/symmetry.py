"""The eight symmetries of the square on the last two axes, for numpy arrays and torch tensors.

rot90 by k quarter turns, after a horizontal flip for k ≥ 4. The training augmentation
(`p2p.bands.augment`) and test-time augmentation (`p2p.infer.tta`) share them. Importing this
module does not import torch: a tensor brings its own methods.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

#: A numpy array or a torch tensor; the result is of the same kind.
A = TypeVar("A")


def _check(k: int) -> None:
    if not 0 <= k < 8:
        raise ValueError(f"k must be in [0, 8), got {k}")


def _flip(x: A) -> A:
    if isinstance(x, np.ndarray):
        return np.flip(x, axis=-1)  # type: ignore[return-value]
    return x.flip(dims=(-1,))  # type: ignore[attr-defined, no-any-return]


def _rot90(x: A, k: int) -> A:
    if isinstance(x, np.ndarray):
        return np.rot90(x, k, axes=(-2, -1))  # type: ignore[return-value]
    return x.rot90(k, dims=(-2, -1))  # type: ignore[attr-defined, no-any-return]


def dihedral(x: A, k: int) -> A:
    """Apply symmetry `k` (0 ≤ k < 8) of the square to the last two axes (a view where numpy
    can make one).

    k % 4 is the number of quarter turns; k ≥ 4 flips horizontally first. k = 0 is identity.

    Args:
        x: `(..., H, W)` array or tensor (square chips keep their shape; rotations swap H and W).
        k: Which of the 8 symmetries.
    """
    _check(k)
    if k >= 4:
        x = _flip(x)
    return _rot90(x, k % 4) if k % 4 else x


def undo_dihedral(x: A, k: int) -> A:
    """Invert `dihedral`: ``undo_dihedral(dihedral(x, k), k)`` is `x`.

    Args:
        x: `(..., H, W)` array or tensor.
        k: The symmetry that was applied (0 ≤ k < 8).
    """
    _check(k)
    x = _rot90(x, -(k % 4)) if k % 4 else x
    return _flip(x) if k >= 4 else x
