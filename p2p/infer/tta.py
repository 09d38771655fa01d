"""Test-time augmentation: a window model averaged over the 8 symmetries of the square.

Around a torch `TensorModel` the batch is turned on the model's device; around another
runtime (ONNX) it is turned in numpy, and torch is not imported. Both sum the 8 outputs in
the same order, so their float32 values agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from p2p.bands.symmetry import dihedral, undo_dihedral
from p2p.infer.backends import TensorModel, WindowModel

if TYPE_CHECKING:
    import torch

    from p2p.infer.translator import Translator


def _cat(parts: list[Any]) -> Any:
    """Concatenate along the channel axis (numpy arrays or torch tensors)."""
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts, axis=1)
    import torch  # a tensor: torch is loaded already

    return torch.cat(parts, dim=1)


def _sqrt(x: Any) -> Any:
    return np.sqrt(x) if isinstance(x, np.ndarray) else x.sqrt()


class DihedralMean:
    """A model averaged over the 8 symmetries of the square.

    Each batch is run once per symmetry (`p2p.bands.symmetry.dihedral`, the training
    augmentation's), each output is turned back (`undo_dihedral`) and the 8 are summed in
    order and divided by 8. Around a `TensorModel` the batch is turned on the model's device
    (8 forwards of the batch, no host copy in between; `run` keeps it there); around another
    runtime (ONNX) each symmetry is turned in numpy. Windows must be square (they are:
    `tile_size` on both axes).

    Args:
        model: The model run per symmetry.
        spread: Also return the 8 outputs' population standard deviation, as `C_out` more
            channels after the mean (the mean's values do not change).
        sampler: With `samples`, the generator with dropout on (`p2p.infer.sampling`), whose
            spread across samples and symmetries replaces the symmetries' own.
        samples: Dropout-on samples of each symmetry (0: none).
    """

    def __init__(
        self,
        model: WindowModel,
        spread: bool = False,
        sampler: Translator | None = None,
        samples: int = 0,
    ) -> None:
        self.model, self.spread = model, spread
        self.sampler, self.samples = sampler, samples
        if isinstance(model, TensorModel):  # then this is a TensorModel too
            self.device = model.device

    def _sampled_spread(self, x: torch.Tensor, samples: int) -> torch.Tensor:
        """Standard deviation across the 8 symmetries x `samples` dropout-on samples of each
        window (`p2p.infer.sampling`), accumulated one output at a time (Welford)."""
        import torch

        from p2p.infer.sampling import SampledGenerator

        assert self.sampler is not None
        module = self.sampler.module
        assert isinstance(module, SampledGenerator)
        mean: torch.Tensor | None = None
        m2: torch.Tensor | None = None
        n = 0
        for sample in range(samples):
            module.sample = sample
            for k in range(8):
                y = undo_dihedral(self.sampler.run(dihedral(x, k).contiguous()), k)
                n += 1
                if mean is None or m2 is None:
                    mean, m2 = y.clone(), torch.zeros_like(y)
                    continue
                delta = y - mean
                mean += delta / n
                m2 += delta * (y - mean)
        assert m2 is not None
        return (m2 / n).sqrt()

    @staticmethod
    def _combine(turned_back: Iterator[Any], spread: bool) -> Any:
        """Mean (and with `spread`, the spread) of the 8 outputs, turned back (arrays or
        tensors): `(N, C_out or 2·C_out, s, s)`."""
        outputs = list(turned_back) if spread else []
        total: Any = None
        for y in outputs or turned_back:
            total = y if total is None else total + y
        assert total is not None
        mean = total / 8
        if not spread:
            return mean
        var: Any = None
        for y in outputs:
            square = (y - mean) ** 2
            var = square if var is None else var + square
        return _cat([mean, _sqrt(var / 8)])

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """`(N, C_in, s, s)` float32 normalized on the device → `(N, C_out, s, s)` there
        (`2·C_out` with `spread`)."""
        assert isinstance(self.model, TensorModel)
        model = self.model
        sampled = self.spread and self.sampler is not None and self.samples > 0
        out = self._combine(
            (undo_dihedral(model.run(dihedral(x, k).contiguous()), k) for k in range(8)),
            self.spread and not sampled,  # the sampled spread replaces the symmetries'
        )
        if sampled:
            return _cat([out, self._sampled_spread(x, self.samples)])  # type: ignore[no-any-return]
        return out  # type: ignore[no-any-return]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """`(N, C_in, s, s)` float32 normalized → `(N, C_out, s, s)` float32 normalized
        (`2·C_out` with `spread`)."""
        if isinstance(self.model, TensorModel):
            from p2p.infer.translator import to_device

            y = self.run(to_device(batch, self.model.device))
            return np.ascontiguousarray(y.cpu().numpy(), dtype=np.float32)
        model = self.model
        total = self._combine(
            (undo_dihedral(model(np.ascontiguousarray(dihedral(batch, k))), k) for k in range(8)),
            self.spread,
        )
        return np.ascontiguousarray(total, dtype=np.float32)
