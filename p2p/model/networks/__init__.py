"""Pix2Pix networks (torch only): the U-Net generator and the PatchGAN discriminator."""

from p2p.model.networks.common import init_weights
from p2p.model.networks.patchgan import PatchGANDiscriminator
from p2p.model.networks.unet import UNetGenerator

__all__ = ["PatchGANDiscriminator", "UNetGenerator", "init_weights"]
