"""The Pix2Pix U-Net generator (Isola et al., 2017), as in the authors' reference code.

Level 0 is the outermost block; level i (1 ≤ i < num_downs) halves the resolution again, and
its output is concatenated with its input on the way up (the skip between levels i and
n − i). Filters double from ngf up to 8·ngf and then stay there; the non-innermost blocks at
8·ngf (levels 4 … num_downs − 2, three of them at num_downs = 8) apply dropout after their
decoder, which is the paper's only source of noise.
"""

from __future__ import annotations

import torch
from torch import nn

from p2p.core.errors import InputError
from p2p.model.networks.common import conv_bias, make_norm

#: The first level whose decoder block applies dropout (levels DROPOUT_LEVEL … num_downs − 2).
DROPOUT_LEVEL = 4


def has_dropout(num_downs: int, dropout: float) -> bool:
    """Whether a U-Net of `num_downs` levels built with `dropout` has a dropout layer."""
    return dropout > 0 and num_downs - 2 >= DROPOUT_LEVEL


def _mult(level: int) -> int:
    """Filter multiplier of a level's inner side: 1, 2, 4, 8, 8, ..."""
    return int(min(2**level, 8))


class UNetSkipBlock(nn.Module):
    """One U-Net level: down-convolve, run the inner levels, up-convolve, concat the input.

    Args:
        outer_nc: Channels this block returns before the skip concat (image bands at level 0).
        inner_nc: Channels after its down-convolution.
        input_nc: Channels it receives (image bands at level 0, else outer_nc).
        submodule: The next inner level, or None for the innermost.
        outermost: Level 0: no activation or norm before the first conv, tanh at the end,
            and no skip concat.
        norm: ``"batch"`` or ``"instance"``.
        dropout: Dropout probability after the decoder (0 for none).
    """

    def __init__(
        self,
        outer_nc: int,
        inner_nc: int,
        input_nc: int,
        submodule: nn.Module | None,
        outermost: bool = False,
        norm: str = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.outermost = outermost
        bias = conv_bias(norm)
        down_conv = nn.Conv2d(input_nc, inner_nc, 4, stride=2, padding=1, bias=bias)
        # In-place activations as in the reference; the LeakyReLU rewrites the skip tensor too,
        # which is harmless because the parent applies ReLU to the concat first.
        down_relu = nn.LeakyReLU(0.2, inplace=True)
        up_relu = nn.ReLU(inplace=True)
        layers: list[nn.Module]
        if outermost:
            assert submodule is not None
            up_conv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, stride=2, padding=1)
            layers = [down_conv, submodule, up_relu, up_conv, nn.Tanh()]
        elif submodule is None:  # innermost: no norm at the bottleneck, no skip inside
            up_conv = nn.ConvTranspose2d(inner_nc, outer_nc, 4, stride=2, padding=1, bias=bias)
            layers = [down_relu, down_conv, up_relu, up_conv, make_norm(norm, outer_nc)]
        else:
            up_conv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, stride=2, padding=1, bias=bias)
            layers = [down_relu, down_conv, make_norm(norm, inner_nc), submodule]
            layers += [up_relu, up_conv, make_norm(norm, outer_nc)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`(N, input_nc, H, W)` → `(N, outer_nc [+ input_nc], H, W)`."""
        if self.outermost:
            out: torch.Tensor = self.model(x)
            return out
        return torch.cat([x, self.model(x)], 1)


class UNetGenerator(nn.Module):
    """Pix2Pix U-Net: `(N, in_channels, H, W)` in [-1, 1] → `(N, out_channels, H, W)` in [-1, 1]
    (unbounded with the linear path).

    With the defaults, `UNetGenerator(3, 3)` has 54,413,955 parameters (the reference count).
    num_downs < 5 (not in the reference) keeps the same rule and is meant for tests.

    Args:
        in_channels: Source bands.
        out_channels: Target bands.
        num_downs: Levels; H and W must be multiples of 2**num_downs (256 for 8).
        ngf: Filters of the first level.
        norm: ``"batch"`` or ``"instance"``.
        dropout: Dropout probability in the innermost non-bottleneck decoder blocks.
        linear_anchor: Add a per-pixel linear path (a 1x1 convolution) to the U-Net's output;
            `anchor_at` starts it at a least-squares fit with the U-Net's last layer at zero.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_downs: int = 8,
        ngf: int = 64,
        norm: str = "batch",
        dropout: float = 0.5,
        linear_anchor: bool = False,
    ) -> None:
        super().__init__()
        if num_downs < 2:
            raise ValueError(f"num_downs must be at least 2, got {num_downs}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_downs = num_downs
        last = num_downs - 1
        block = UNetSkipBlock(
            ngf * _mult(last - 1), ngf * _mult(last), ngf * _mult(last - 1), None, norm=norm
        )
        for level in range(last - 1, 0, -1):
            outer = ngf * _mult(level - 1)
            drop = dropout if level >= DROPOUT_LEVEL else 0.0
            block = UNetSkipBlock(outer, ngf * _mult(level), outer, block, norm=norm, dropout=drop)
        self.model = UNetSkipBlock(out_channels, ngf, in_channels, block, outermost=True, norm=norm)
        self.linear = nn.Conv2d(in_channels, out_channels, 1) if linear_anchor else None

    @torch.no_grad()
    def anchor_at(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Start from a per-pixel linear map: the linear path at (weight, bias), the U-Net's
        last convolution at zero, so the output is exactly the linear map until training moves
        it (and the U-Net learns only what spatial context adds).

        Args:
            weight: `(out_channels, in_channels)` in normalized units.
            bias: `(out_channels,)`.
        """
        if self.linear is None:
            raise ValueError("anchor_at needs a generator built with linear_anchor=True")
        self.linear.weight.copy_(weight.reshape(self.linear.weight.shape))
        assert self.linear.bias is not None
        self.linear.bias.copy_(bias)
        last = self.model.model[3]  # the outermost up-convolution, before tanh
        assert isinstance(last, nn.ConvTranspose2d) and last.bias is not None
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this (2**num_downs)."""
        return int(2**self.num_downs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Translate a batch of source chips.

        Args:
            x: `(N, in_channels, H, W)` normalized source.

        Returns:
            `(N, out_channels, H, W)` normalized prediction in [-1, 1].

        Raises:
            InputError: H or W is not a multiple of 2**num_downs.
        """
        h, w = x.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise InputError(
                "model input",
                f"{h}x{w} pixels: each side must be a multiple of 2^num_downs = {self.multiple}",
            )
        out: torch.Tensor = self.model(x)
        if self.linear is not None:
            out = out + self.linear(x)
        return out
