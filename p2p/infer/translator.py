"""The torch runtime: a bundle's generator on batches of normalized windows, CPU or GPU.

The windowed engine (`p2p.infer.inference`) sees a `WindowModel`, a function of window batches; the
runtime behind it is a setting (`PredictConfig.runtime`) that `p2p.infer.runtime` resolves, not a
second engine. `Translator` runs the bundle's torch generator (`p2p.infer.onnxrun` runs its
``model.onnx``); `DihedralMean` averages either over the square's symmetries.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from p2p.infer.cpuforward import WindowParallel, intra_op_budget
from p2p.model.pix2pix import select_device


class WindowModel(Protocol):
    """`(N, C_in, h, w)` float32 normalized → `(N, C_out, h, w)` float32 normalized."""

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class TensorModel(Protocol):
    """A `WindowModel` that also runs batches already on its device (`run`), with no host
    copy: `(N, C_in, h, w)` float32 normalized tensor → the same for `C_out`, on that device."""

    device: torch.device

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...

    def run(self, x: torch.Tensor) -> torch.Tensor: ...


def pick_device(name: str) -> torch.device:
    """Resolve ``auto``/``cpu``/``cuda`` for prediction (auto: CUDA when present)."""
    return select_device(name, field="predict.device")


class Translator:
    """The generator as a function of normalized window batches.

    On CUDA it runs with channels_last and autocast (bf16 where supported, else fp16).

    Args:
        generator: Module mapping `(N, C_in, h, w)` in [-1, 1] to `(N, C_out, h, w)`.
        device: Where it runs; the module is moved there and put in eval mode.
        fast: channels_last + autocast; None: on CUDA only. True on CPU (bf16 autocast) runs
            the GPU's code path there, for tests.
    """

    def __init__(
        self, generator: torch.nn.Module, device: torch.device, fast: bool | None = None
    ) -> None:
        self.device = device
        self.module = generator
        self.cuda = device.type == "cuda"
        self.fast = self.cuda if fast is None else fast
        self.generator = generator.to(device).eval()
        if self.fast:
            self.generator = self.generator.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        bf16 = not self.cuda or torch.cuda.is_bf16_supported()
        self.amp_dtype = torch.bfloat16 if bf16 else torch.float16
        #: On CPU (without the GPU's code path) the batch runs on one intra-op thread, in
        #: parts side by side, so pixels do not depend on the thread count (`cpuforward`).
        self.parallel = (
            None
            if self.fast or device.type != "cpu"
            else WindowParallel(self.generator, intra_op_budget())
        )

    @torch.no_grad()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        """`(N, C_in, h, w)` float32 normalized on `device` → `(N, C_out, h, w)` float32
        normalized, there (no grad, ordinary tensors: the strip loop adds into them)."""
        if self.parallel is not None:
            return self.parallel(x).float()
        if self.fast:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.fast):
            y: torch.Tensor = self.generator(x)
        return y.float()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """`(N, C_in, h, w)` float32 normalized → `(N, C_out, h, w)` float32 normalized."""
        return np.ascontiguousarray(self.run(to_device(batch, self.device)).cpu().numpy())


def to_device(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host batch on `device` (through pinned memory on CUDA, so the copy runs async)."""
    x = torch.from_numpy(batch)
    return x.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else x


class DihedralMean:
    """Test-time augmentation: a model averaged over the 8 symmetries of the square.

    Each batch is run once per symmetry (`p2p.bands.augment.dihedral`, the training
    augmentation's), each output is turned back (`undo_dihedral`) and the 8 are summed in
    order and divided by 8. Around a `TensorModel` the batch is turned on the model's device
    (8 forwards of the batch, no host copy in between; `run` keeps it there); around another
    runtime (ONNX) each symmetry goes through numpy. Windows must be square (they are:
    `tile_size` on both axes).

    Args:
        model: The model run per symmetry.
        spread: Also return the 8 outputs' population standard deviation, as `C_out` more
            channels after the mean (the mean's values do not change).
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
        from p2p.bands.augment import dihedral, undo_dihedral
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

    def _combine(self, turned_back: Iterator[torch.Tensor], spread: bool) -> torch.Tensor:
        """Mean (and with `spread`, the spread) of the 8 outputs, turned back:
        `(N, C_out or 2·C_out, s, s)`."""
        outputs = list(turned_back) if spread else []
        total: torch.Tensor | None = None
        for y in outputs or turned_back:
            total = y if total is None else total + y
        assert total is not None
        mean = total / 8
        if not spread:
            return mean
        var = sum(((y - mean) ** 2 for y in outputs), torch.zeros_like(mean)) / 8
        return torch.cat([mean, var.sqrt()], dim=1)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """`(N, C_in, s, s)` float32 normalized on the device → `(N, C_out, s, s)` there
        (`2·C_out` with `spread`)."""
        from p2p.bands.augment import dihedral, undo_dihedral

        assert isinstance(self.model, TensorModel)
        model = self.model
        sampled = self.spread and self.sampler is not None and self.samples > 0
        out = self._combine(
            (undo_dihedral(model.run(dihedral(x, k).contiguous()), k) for k in range(8)),
            self.spread and not sampled,  # the sampled spread replaces the symmetries'
        )
        if sampled:
            return torch.cat([out, self._sampled_spread(x, self.samples)], dim=1)
        return out

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """`(N, C_in, s, s)` float32 normalized → `(N, C_out, s, s)` float32 normalized
        (`2·C_out` with `spread`)."""
        if isinstance(self.model, TensorModel):
            y = self.run(to_device(batch, self.model.device))
            return np.ascontiguousarray(y.cpu().numpy(), dtype=np.float32)
        from p2p.bands.augment import dihedral, undo_dihedral

        x, model = torch.from_numpy(batch), self.model
        total = self._combine(
            (
                undo_dihedral(
                    torch.from_numpy(model(np.ascontiguousarray(dihedral(x, k).numpy()))), k
                )
                for k in range(8)
            ),
            self.spread,
        )
        return np.ascontiguousarray(total.numpy(), dtype=np.float32)
