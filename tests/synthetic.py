"""A small synthetic paired dataset: smooth random source fields and a fixed function of them.

For tests, benchmarks and quick checks without rasters. Each chip's source bands are smooth
random fields in [-1, 1] (seeded low-resolution noise, upsampled bilinearly); each target band
is a fixed smooth per-pixel function of the source bands, so a generator can learn the mapping
exactly. An optional nodata border marks the outer pixels invalid and fills them with garbage,
as real scene edges do.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from p2p.bands.augment import augment_pair
from p2p.bands.normalization import BandStats

Sample = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def target_function(source: torch.Tensor, out_bands: int) -> torch.Tensor:
    """The fixed mapping from source to target bands, per pixel.

    Args:
        source: `(Cs, H, W)` in [-1, 1].
        out_bands: Number of target bands.

    Returns:
        `(out_bands, H, W)` in (-1, 1).
    """
    cs = source.shape[0]
    bands = []
    for k in range(out_bands):
        # a different, fixed mix of the source bands per output band, bent by tanh and a product
        a = source[k % cs]
        b = source[(k + 1) % cs]
        bands.append(torch.tanh(1.5 * (0.8 * a - 0.5 * b) + 0.7 * a * b + 0.2 * math.cos(k)))
    return torch.stack(bands)


class SyntheticPairs(Dataset[Sample]):
    """Seeded synthetic `(source, target, valid)` chips, already normalized to [-1, 1].

    Args:
        n_chips: Distinct chips.
        size: Chip side in pixels.
        in_bands: Source bands.
        out_bands: Target bands.
        seed: Seed of the chips (the same seed gives the same chips).
        nodata_border: Width in pixels of an invalid border (0 for none).
        augment: Apply a random paired flip/rotation on each access (training sets).
        repeat: The dataset lists its chips this many times (longer epochs on tiny data).
    """

    def __init__(
        self,
        n_chips: int,
        size: int = 64,
        in_bands: int = 3,
        out_bands: int = 1,
        seed: int = 0,
        nodata_border: int = 0,
        augment: bool = False,
        repeat: int = 1,
    ) -> None:
        gen = torch.Generator().manual_seed(seed)
        coarse = torch.rand(n_chips, in_bands, max(2, size // 8), max(2, size // 8), generator=gen)
        fields = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
        self.source = (fields * 2 - 1).contiguous()
        self.target = torch.stack([target_function(s, out_bands) for s in self.source])
        self.valid = torch.ones(n_chips, 1, size, size)
        if nodata_border:
            b = nodata_border
            self.valid[..., :b, :] = self.valid[..., -b:, :] = 0
            self.valid[..., :b] = self.valid[..., -b:] = 0
            garbage = torch.rand(self.target.shape, generator=gen) * 2 - 1
            self.target = torch.where(self.valid.bool(), self.target, garbage)
        self.augment = augment
        self.repeat = repeat

    def __len__(self) -> int:
        return self.source.shape[0] * self.repeat

    def __getitem__(self, index: int) -> Sample:
        i = index % self.source.shape[0]
        sample = (self.source[i], self.target[i], self.valid[i])
        return augment_pair(*sample) if self.augment else sample

    @staticmethod
    def stats(bands: int, low: float = 0.0, high: float = 10000.0) -> BandStats:
        """Statistics under which [-1, 1] means [low, high] raster units (e.g. uint16 values)."""
        mid, half = (low + high) / 2, (high - low) / 2
        return BandStats(
            mean=(mid,) * bands, std=(half / 2,) * bands, low=(low,) * bands, high=(high,) * bands
        )
