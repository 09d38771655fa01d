"""Pix2Pix networks (torch only): the U-Net generator and the PatchGAN discriminator.

`build_generator` is the one place a generator is made from an architecture config (training,
checkpoints and bundles all call it), as `networks.define_G` is in junyanz's pix2pix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from p2p.model.networks.common import init_weights
from p2p.model.networks.patchgan import PatchGANDiscriminator
from p2p.model.networks.unet import UNetGenerator

if TYPE_CHECKING:
    from p2p.core.config import ModelConfig


def build_generator(model: ModelConfig, in_channels: int, out_channels: int) -> UNetGenerator:
    """An untrained U-Net generator with `model`'s architecture for these band counts."""
    return UNetGenerator(
        in_channels, out_channels, model.num_downs, model.ngf, model.norm, model.dropout
    )


__all__ = ["PatchGANDiscriminator", "UNetGenerator", "build_generator", "init_weights"]
