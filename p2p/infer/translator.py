"""Running a generator on batches of normalized windows, on the CPU or a GPU.

Needs only torch and numpy (and p2p.core.errors), so a GPU box can run it with nothing else.
"""

from __future__ import annotations

import numpy as np
import torch

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
        self.cuda = device.type == "cuda"
        self.fast = self.cuda if fast is None else fast
        self.generator = generator.to(device).eval()
        if self.fast:
            self.generator = self.generator.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        bf16 = not self.cuda or torch.cuda.is_bf16_supported()
        self.amp_dtype = torch.bfloat16 if bf16 else torch.float16

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """`(N, C_in, h, w)` float32 normalized → `(N, C_out, h, w)` float32 normalized."""
        x = torch.from_numpy(batch)
        if self.cuda:
            x = x.pin_memory().to(self.device, non_blocking=True)
        if self.fast:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.fast):
            y = self.generator(x)
        return np.ascontiguousarray(y.float().cpu().numpy())
