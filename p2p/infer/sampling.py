"""Dropout-on samples of a generator, reproducible window by window.

The U-Net's innermost decoder blocks apply dropout (Isola et al. keep it on at test time as
the generator's noise). `sampling_generator` copies a generator with each `nn.Dropout`
replaced by `SeededDropout`, whose masks come from generators seeded per window by the
window's own pixels and the sample's number (`window_seeds`): sample s of a window is the
same in any batch, on any thread count, in any process, and in a resumed run — like the
prediction itself (`p2p.infer.cpuforward`). p2p's uncertainty raster takes the spread across
these samples (`predict.samples`, `p2p predict --samples N`).
"""

from __future__ import annotations

import copy
import hashlib
import threading

import torch
from torch import nn

_local = threading.local()  # the pool threads of one forward each seed their own part


def window_seeds(x: torch.Tensor, sample: int) -> list[int]:
    """One 63-bit seed per window of `x` `(N, C, h, w)`, from its pixels and `sample`.

    The pixels are reduced on their device (a float64 dot product with a fixed pseudo-random
    vector, no host copy of the windows) and hashed with the sample's number.
    """
    flat = x.detach().flatten(1).double()
    weights = torch.Generator(device="cpu").manual_seed(0x9E3779B9)
    probe = torch.rand(flat.shape[1], generator=weights, dtype=torch.float64).to(x.device)
    digests = (flat * probe).sum(1).cpu().tolist()
    seeds = []
    for digest in digests:
        h = hashlib.blake2b(f"{digest!r}/{sample}".encode(), digest_size=8).digest()
        seeds.append(int.from_bytes(h, "little") >> 1)
    return seeds


class SeededDropout(nn.Module):
    """Dropout whose mask for window n comes from the n-th generator set by `SampledGenerator`
    in this thread (always on: it exists only in a sampling copy)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        generators: list[torch.Generator] = _local.generators
        keep = torch.stack(
            [torch.rand(x.shape[1:], generator=g, device=x.device) >= self.p for g in generators]
        )
        return x * keep / (1 - self.p)


class SampledGenerator(nn.Module):
    """A generator copy with dropout on; `sample` picks which sample of each window.

    Args:
        generator: The copy made by `sampling_generator`.
    """

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator
        self.sample = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`(N, C_in, h, w)` → `(N, C_out, h, w)`, sample `self.sample` of each window."""
        device = x.device if x.device.type == "cuda" else torch.device("cpu")
        _local.generators = [
            torch.Generator(device=device).manual_seed(s) for s in window_seeds(x, self.sample)
        ]
        try:
            y: torch.Tensor = self.generator(x)
        finally:
            del _local.generators
        return y


def dropout_layers(generator: nn.Module) -> int:
    """How many dropout layers `generator` has (0: its samples would all be the same)."""
    return sum(isinstance(m, nn.Dropout) and m.p > 0 for m in generator.modules())


def sampling_generator(generator: nn.Module) -> SampledGenerator:
    """A copy of `generator` (eval mode: batch norm keeps its running statistics) whose
    dropout layers stay on, seeded per window (`SeededDropout`)."""
    twin = copy.deepcopy(generator).eval()
    for module in list(twin.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.Dropout) and child.p > 0:
                setattr(module, name, SeededDropout(child.p))
    return SampledGenerator(twin)
