"""Pix2Pix networks (torch only): the U-Net generator and the PatchGAN discriminator."""

from p2p.models.common import init_weights
from p2p.models.patchgan import PatchGANDiscriminator
from p2p.models.unet import UNetGenerator

__all__ = ["PatchGANDiscriminator", "UNetGenerator", "init_weights"]
