"""Pieces both networks share: the normalization layer choice and the paper's weight init."""

from __future__ import annotations

import torch
from torch import nn

NORMS = ("batch", "instance")


def make_norm(kind: str, channels: int) -> nn.Module:
    """The normalization layer of the reference implementation.

    Args:
        kind: ``"batch"`` (BatchNorm2d, running statistics at inference, so every tile of a
            scene is normalized alike) or ``"instance"`` (InstanceNorm2d without affine
            parameters, as in the reference).
        channels: Feature channels.
    """
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


def conv_bias(kind: str) -> bool:
    """Convolutions followed by BatchNorm carry no bias (BatchNorm's shift replaces it)."""
    return kind == "instance"


@torch.no_grad()
def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """Initialize as Isola et al.: conv weights ~ N(0, gain), BatchNorm weights ~ N(1, gain).

    Biases are set to 0. Uses the global torch RNG, so seed it first for reproducible weights.

    Args:
        module: A network; every submodule is visited.
        gain: Standard deviation of the normal draws.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
