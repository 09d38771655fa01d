"""The PatchGAN discriminator of Pix2Pix (Isola et al., 2017), as in the reference code.

A stack of 4x4 convolutions that scores overlapping patches as real or fake; with n_layers = 3
each output logit sees a 70x70 patch, and a 256x256 input yields a 30x30 map of logits.
"""

from __future__ import annotations

import torch
from torch import nn

from p2p.model.networks.common import conv_bias, make_norm


class PatchGANDiscriminator(nn.Module):
    """Conditional PatchGAN: scores `cat(source, image)` patch by patch.

    With the defaults, `PatchGANDiscriminator(6)` has 2,768,705 parameters (the reference
    count).

    Args:
        in_channels: Source bands + target bands (the two are concatenated).
        ndf: Filters of the first layer.
        n_layers: Stride-2 layers after the first; 3 gives a 70x70 receptive field.
        norm: ``"batch"`` or ``"instance"``.
    """

    def __init__(
        self, in_channels: int, ndf: int = 64, n_layers: int = 3, norm: str = "batch"
    ) -> None:
        super().__init__()
        bias = conv_bias(norm)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1  # the last feature layer keeps the resolution
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=bias),
                make_norm(norm, ndf * mult),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, source: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Patch logits for a (source, real or generated target) pair.

        Args:
            source: `(N, Cs, H, W)` normalized source.
            image: `(N, Ct, H, W)` normalized target or generator output.

        Returns:
            `(N, 1, H', W')` logits (30x30 for 256x256 input and n_layers = 3).
        """
        out: torch.Tensor = self.model(torch.cat([source, image], 1))
        return out
