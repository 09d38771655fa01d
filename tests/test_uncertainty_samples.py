"""Dropout-on samples for the uncertainty raster (`predict.samples`, `p2p predict --samples`):
reproducible per window (any batch, any thread count, any process) and tied to the model's
dropout layers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from pydantic import ValidationError

from p2p.bands.normalization import BandStats
from p2p.core.config import ModelConfig, PredictConfig, SceneConfig
from p2p.infer.inference import predict_scene, uncertainty_path
from p2p.infer.sampling import dropout_layers, sampling_generator
from p2p.infer.translator import Translator
from p2p.infer.tta import DihedralMean
from p2p.model.bundle import Bundle, load_bundle, write_bundle
from p2p.model.meta import BundleMeta
from p2p.model.networks.unet import UNetGenerator, has_dropout
from tests.faultkit import assert_failed_cleanly, cli, write_scene, write_tiny_bundle

DEEP = ModelConfig(num_downs=6, ngf=4, ndf=4, norm="batch", dropout=0.5, linear_anchor=False)
CFG = PredictConfig(
    tile_size=64, overlap=8, batch_size=3, output_format="gtiff", device="cpu", uncertainty=True
)


def _generator() -> UNetGenerator:
    torch.manual_seed(0)
    return UNetGenerator(2, 1, num_downs=6, ngf=4, norm="batch", dropout=0.5).eval()


@pytest.fixture(scope="module")
def deep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-level U-Net bundle: one decoder block with dropout."""
    stats = BandStats((500.0,) * 2, (200.0,) * 2, (0.0,) * 2, (3000.0,) * 2)
    meta = BundleMeta(
        model=DEEP, in_channels=2, out_channels=1, source_bands=("b1", "b2"),
        target_bands=("t1",), source_stats=stats.to_dict(),
        target_stats=BandStats((900.0,), (300.0,), (0.0,), (4000.0,)).to_dict(),
        target_dtype="uint16", target_nodata=0.0, source_nodata=0.0, chip_size=64,
    )  # fmt: skip
    return write_bundle(tmp_path_factory.mktemp("deep") / "model", _generator(), meta)


def test_samples_are_the_same_per_window_in_any_batch_and_thread_count() -> None:
    generator = _generator()
    assert dropout_layers(generator) == 1  # level 4 of 6 (three at num_downs 8)
    x = torch.rand(5, 2, 64, 64) * 2 - 1
    before = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            sampler = Translator(sampling_generator(generator), torch.device("cpu"))
            module = sampler.module
            for sample in (0, 1):
                module.sample = sample  # type: ignore[assignment]
                runs.append((sampler.run(x), sampler.run(x[2:4])))
    finally:
        torch.set_num_threads(before)
    (a, a_part), (b, _), (c, c_part), (d, _) = runs  # samples 0, 1 on 1 thread, then 3
    assert torch.equal(a, c) and torch.equal(b, d)  # thread counts
    assert torch.equal(a[2:4], a_part) and torch.equal(c[2:4], c_part)  # batches
    assert not torch.equal(a, b)  # another sample, other masks
    plain = Translator(generator, torch.device("cpu")).run(x)
    assert not torch.equal(a, plain)  # dropout is on in the samples...
    assert torch.equal(Translator(generator, torch.device("cpu")).run(x), plain)  # ...not here


def test_spread_across_samples_keeps_the_mean() -> None:
    generator = _generator()
    x = torch.rand(2, 2, 64, 64) * 2 - 1
    model = Translator(generator, torch.device("cpu"))
    symmetries = DihedralMean(model, spread=True).run(x)
    sampler = Translator(sampling_generator(generator), torch.device("cpu"))
    sampled = DihedralMean(model, spread=True, sampler=sampler, samples=3).run(x)
    assert torch.equal(sampled[:, :1], symmetries[:, :1])  # the prediction does not change
    assert (sampled[:, 1:] > 0).float().mean() > 0.99
    assert not torch.allclose(sampled[:, 1:], symmetries[:, 1:])


def test_predict_with_samples_writes_a_reproducible_spread(tmp_path: Path, deep: Path) -> None:
    bundle: Bundle = load_bundle(deep)
    scene = SceneConfig(source=str(write_scene(tmp_path / "scene.tif", height=150, width=90)))
    config = CFG.model_copy(update={"samples": 2})
    plain = predict_scene(bundle, scene, tmp_path / "plain.tif", CFG)
    first = predict_scene(bundle, scene, tmp_path / "a" / "pred.tif", config)
    again = predict_scene(bundle, scene, tmp_path / "b" / "pred.tif", config)
    with rasterio.open(plain.output) as p, rasterio.open(first.output) as f:
        assert np.array_equal(p.read(), f.read())  # the prediction is the same
    spreads, meanings = [], []
    for result in (first, again, plain):
        with rasterio.open(uncertainty_path(Path(result.output))) as u:
            spreads.append(u.read())
            meanings.append(u.tags()["P2P_UNCERTAINTY"])
    assert "2 dropout-on samples" in meanings[0] and "dropout" not in meanings[2]
    assert np.array_equal(spreads[0], spreads[1], equal_nan=True)
    assert not np.array_equal(spreads[0], spreads[2], equal_nan=True)
    assert np.nanmin(spreads[0]) >= 0 and np.nanmean(spreads[0]) > 0


def test_samples_need_uncertainty_and_torch() -> None:
    with pytest.raises(ValidationError, match="samples needs uncertainty"):
        PredictConfig(samples=2)
    with pytest.raises(ValidationError, match="samples needs runtime torch"):
        PredictConfig(samples=2, uncertainty=True, runtime="onnx")


def test_cli_refuses_samples_of_a_model_without_dropout(tmp_path: Path) -> None:
    model = write_tiny_bundle(tmp_path / "model")
    scene = write_scene(tmp_path / "scene.tif")
    out = tmp_path / "out" / "pred.tif"
    args = ["predict", "--model", model, "--input", scene, "--output", out, "--uncertainty",
            "--samples", "2", "--device", "cpu", "--tile-size", "32", "--overlap", "4"]  # fmt: skip
    line = assert_failed_cleanly(cli(args, timeout=120), "predict.samples")
    assert "no dropout layer" in line
    assert not out.parent.exists() or not any(out.parent.iterdir())


@pytest.mark.parametrize("num_downs", range(2, 9))
def test_the_check_knows_which_u_nets_have_dropout(num_downs: int) -> None:
    """`has_dropout` (the check, from model.json alone) agrees with the built network."""
    built = UNetGenerator(2, 1, num_downs=num_downs, ngf=2, dropout=0.5)
    assert has_dropout(num_downs, 0.5) == (dropout_layers(built) > 0)
    assert not has_dropout(num_downs, 0.0)
