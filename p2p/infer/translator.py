"""The torch runtime: a bundle's generator on batches of normalized windows, CPU or GPU.

The windowed engine (`p2p.infer.inference`) sees a `WindowModel`, a function of window batches; the
runtime behind it is a setting (`PredictConfig.runtime`) that `p2p.infer.runtime` resolves, not a
second engine. `Translator` runs the bundle's torch generator (`p2p.infer.onnxrun` runs its
``model.onnx``; `p2p.infer.tta` averages either over the square's symmetries).
"""

from __future__ import annotations

import numpy as np
import torch

from p2p.infer.cpuforward import WindowParallel, intra_op_budget
from p2p.model.pix2pix import select_device


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
