"""The GPU code path (autocast, GradScaler, channels_last, fused Adam) trains and agrees with
plain fp32, run on the CPU too where torch allows it, so only the device differs.

The `cuda` cases are marked `gpu`: skipped where no CUDA device is present.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import torch
from synthetic import SyntheticPairs

from p2p.bands.normalization import BandStats
from p2p.core.config import ModelConfig, PredictConfig, SceneConfig, TrainConfig
from p2p.infer.backends import TorchWindows
from p2p.infer.inference import predict_scene
from p2p.infer.runtime import open_windows
from p2p.infer.translator import Translator
from p2p.model.bundle import Bundle, BundleMeta, load_bundle, write_bundle
from p2p.model.checkpoint import load_checkpoint
from p2p.model.networks import UNetGenerator
from p2p.model.pix2pix import StepOptions, build_pix2pix, train_step
from p2p.model.training import _warn_small_batch, train
from tests.rasters import write_geotiff

MODEL = ModelConfig(
    num_downs=5, ngf=16, ndf=16, n_layers_d=3, norm="batch", dropout=0.0, linear_anchor=False
)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _train_cfg(precision: str) -> SimpleNamespace:
    return SimpleNamespace(
        lr=2e-4, beta1=0.5, epochs=1, epochs_decay=0, precision=precision, seed=0, ema_epochs=0.0
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_optimized_step_trains(device: str, precision: str) -> None:
    torch.set_num_threads(1)  # the suite shares 2 cores
    run = build_pix2pix(MODEL, _train_cfg(precision), 3, 1, torch.device(device), fast_layout=True)
    assert (
        run.channels_last
        and run.amp_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    )
    assert run.scaler.is_enabled() == (precision == "fp16")  # the fp16 GradScaler runs on CPU too
    assert all(g.get("fused") for g in run.opt_g.param_groups)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 64, 64, generator=gen) * 2 - 1
    y = x.mean(dim=1, keepdim=True)
    valid = torch.ones(4, 1, 64, 64)
    before = [p.detach().clone() for p in run.g.parameters()]
    # fp16: the scaler starts at 2**16, so G's first steps overflow and are skipped while the
    # scale backs off (3 steps for this model): the test must train past them
    for _ in range(5):
        batch = run.to_device(x, y, valid)
        assert batch[0].is_contiguous(memory_format=torch.channels_last)
        losses = train_step(run, *batch, StepOptions(lambda_l1=100.0))
    assert torch.isfinite(losses).all()
    assert any(
        not torch.equal(b, p.detach()) for b, p in zip(before, run.g.parameters(), strict=True)
    )
    if precision == "fp16":
        assert 1.0 < run.scaler.get_scale() < 2.0**16  # backed off from overflow, still scaling


@pytest.mark.parametrize("device", DEVICES)
def test_fast_translator_matches_fp32(device: str) -> None:
    torch.manual_seed(0)
    g = UNetGenerator(3, 2, num_downs=5, ngf=16, dropout=0.0).eval()
    batch = np.random.default_rng(0).uniform(-1, 1, (2, 3, 64, 64)).astype(np.float32)
    plain = Translator(g, torch.device("cpu"), fast=False)(batch)
    fast = Translator(g, torch.device(device), fast=True)
    assert fast.fast and fast.amp_dtype in (torch.bfloat16, torch.float16)
    out = fast(batch)
    assert out.shape == plain.shape and out.dtype == np.float32
    assert not np.array_equal(out, plain)  # it did run at reduced precision
    np.testing.assert_allclose(out, plain, atol=0.05)  # bf16/fp16 autocast vs fp32


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_training_runs_on_cpu(tmp_path: Path, precision: str) -> None:
    torch.set_num_threads(1)
    data = SyntheticPairs(4, size=32, in_bands=2, out_bands=1, seed=0)
    cfg = TrainConfig(
        epochs=1, batch_size=2, device="cpu", precision=precision, seed=0, preview_chips=1
    )
    model = ModelConfig(num_downs=4, ngf=8, ndf=8)
    result = train(data, data, model, cfg, tmp_path, SyntheticPairs.stats(1))
    assert result.epochs_done == 1 and np.isfinite(result.metrics["overall"]["mae"])
    weights = load_checkpoint(result.checkpoint)["generator"]
    floats = {t.dtype for t in weights.values() if t.is_floating_point()}
    assert floats == {torch.float32}  # master weights stay fp32 under autocast


def _unet_bundle(model_dir: Path) -> Bundle:
    """A 5-level U-Net bundle, 3 uint16 bands → 1 float32 band with a [0, 2] target span."""
    torch.manual_seed(0)
    model = {"num_downs": 5, "ngf": 16, "norm": "batch", "dropout": 0.0}
    generator = UNetGenerator(3, 1, **model).eval()  # type: ignore[arg-type]
    meta = BundleMeta(
        model=model,
        in_channels=3,
        out_channels=1,
        source_bands=("b1", "b2", "b3"),
        target_bands=("t",),
        source_stats=BandStats((2000.0,) * 3, (500.0,) * 3, (0.0,) * 3, (4000.0,) * 3).to_dict(),
        target_stats=BandStats((1.0,), (0.5,), (0.0,), (2.0,)).to_dict(),
        target_dtype="float32",
        target_nodata=None,
        source_nodata=0.0,
        chip_size=64,
    )
    write_bundle(model_dir, generator, meta)
    return load_bundle(model_dir)


@pytest.mark.gpu
@pytest.mark.parametrize("tta", [False, True])
def test_device_resident_prediction_matches_the_cpu(tmp_path: Path, tta: bool) -> None:
    """On CUDA, windows, symmetries and blend sums stay on the device (`TorchWindows`, bf16 or
    fp16 autocast); the scene agrees with the CPU's numpy path within docs/inference.md's
    precision: 0.05 of the normalized range [-1, 1], i.e. 0.05 in this target's units."""
    bundle = _unet_bundle(tmp_path / "model")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:300, 0:260]
    base = 2000 + 900 * np.sin(xx / 23.0) * np.cos(yy / 31.0)
    data = np.stack([base + 150 * b + rng.normal(0, 40, base.shape) for b in range(3)])
    data[:, 40:60, 100:130] = 0  # a hole of nodata
    scene = SceneConfig(source=str(write_geotiff(tmp_path / "s.tif", data.astype(np.uint16))))
    config = PredictConfig(tile_size=64, overlap=8, batch_size=4, output_format="gtiff", tta=tta)
    assert isinstance(open_windows(bundle, config.model_copy(update={"device": "cuda"})),
                      TorchWindows)  # fmt: skip
    out = {}
    for device in ("cpu", "cuda"):
        cfg = config.model_copy(update={"device": device})
        out[device] = predict_scene(bundle, scene, tmp_path / f"{device}.tif", cfg).output
    with rasterio.open(out["cpu"]) as c, rasterio.open(out["cuda"]) as g:
        cpu, gpu = c.read(1), g.read(1)
    np.testing.assert_array_equal(np.isnan(cpu), np.isnan(gpu))  # nodata where the source is
    valid = ~np.isnan(cpu)
    assert np.isnan(cpu).any() and valid.mean() > 0.95
    diff = np.abs(gpu[valid] - cpu[valid])
    assert diff.max() <= 0.05, diff.max()
    assert diff.mean() <= 0.01, diff.mean()


@pytest.mark.gpu
def test_batch_one_on_cuda_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = SyntheticPairs(4, size=32, in_bands=2, out_bands=1, seed=0)
    cfg = TrainConfig(epochs=1, batch_size=1, device="cuda", seed=0, preview_chips=0)
    model = ModelConfig(num_downs=4, ngf=8, ndf=8)
    _warn_small_batch.cache_clear()  # as in a fresh process
    with caplog.at_level("WARNING", logger="p2p.model.training"):
        train(data, data, model, cfg, tmp_path / "a", SyntheticPairs.stats(1))
        train(data, data, model, cfg, tmp_path / "b", SyntheticPairs.stats(1))
    warned = [r for r in caplog.records if "batch_size 1 on CUDA" in r.getMessage()]
    assert len(warned) == 1
