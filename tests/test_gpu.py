"""The CUDA path (autocast, channels_last, fused Adam) agrees with the CPU path.

Marked `gpu`: skipped where no CUDA device is present (CI here has none).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from p2p.infer.translator import Translator
from p2p.model.networks import UNetGenerator
from p2p.model.pix2pix import build_pix2pix, train_step

pytestmark = pytest.mark.gpu

MODEL = SimpleNamespace(num_downs=5, ngf=16, ndf=16, n_layers_d=3, norm="batch", dropout=0.0)


def _train_cfg(precision: str) -> SimpleNamespace:
    return SimpleNamespace(
        lr=2e-4, beta1=0.5, epochs=1, epochs_decay=0, precision=precision, seed=0
    )


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_optimized_cuda_step_trains(precision: str) -> None:
    run = build_pix2pix(MODEL, _train_cfg(precision), 3, 1, torch.device("cuda"))
    assert run.channels_last and run.amp_dtype is not None
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 64, 64, generator=gen) * 2 - 1
    y = x.mean(dim=1, keepdim=True)
    valid = torch.ones(4, 1, 64, 64)
    before = [p.detach().clone() for p in run.g.parameters()]
    for _ in range(3):
        losses = train_step(run, *run.to_device(x, y, valid), 100.0)
    assert torch.isfinite(losses).all()
    assert any(
        not torch.equal(b, p.detach()) for b, p in zip(before, run.g.parameters(), strict=True)
    )


def test_cuda_translator_matches_cpu() -> None:
    torch.manual_seed(0)
    g = UNetGenerator(3, 2, num_downs=5, ngf=16, dropout=0.0).eval()
    batch = np.random.default_rng(0).uniform(-1, 1, (2, 3, 64, 64)).astype(np.float32)
    on_cpu = Translator(g, torch.device("cpu"))(batch)
    on_gpu = Translator(g, torch.device("cuda"))(batch)
    assert on_gpu.shape == on_cpu.shape
    np.testing.assert_allclose(on_gpu, on_cpu, atol=0.05)  # bf16/fp16 autocast vs fp32
