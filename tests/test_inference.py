"""Windowed inference: exact grid/dtype/nodata, no seams, bit-identical resume, clean errors."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from rio_cogeo.cogeo import cog_validate

from p2p.bands.normalization import BandStats, denormalize, normalize
from p2p.core.config import PredictConfig, SceneConfig
from p2p.core.errors import ConfigError, InputError
from p2p.infer import strips
from p2p.infer.inference import predict_scene
from p2p.model.bundle import Bundle, BundleMeta, load_bundle, write_bundle
from p2p.model.networks import UNetGenerator
from p2p.stages.predict import run as predict_stage
from p2p.stages.record import RunRecord
from tests.faultkit import assert_one_line_error, cli
from tests.rasters import write_geotiff

SOURCE_STATS = BandStats(mean=(100.0, 50.0), std=(30.0, 20.0), low=(0.0, 0.0), high=(200.0, 100.0))
TARGET_STATS = {
    "uint8": BandStats(mean=(120.0,), std=(40.0,), low=(10.0,), high=(250.0,)),
    "uint16": BandStats(mean=(900.0,), std=(300.0,), low=(0.0,), high=(4000.0,)),
    "float32": BandStats(mean=(0.2,), std=(0.1,), low=(-0.5,), high=(0.8,)),
}
NUM_DOWNS = 3  # model input multiple 8


class PixelFunction(torch.nn.Module):
    """A smooth pixel-wise function of the bands: tiling must not change it at all."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(0.9 * x[:, :1] - 0.4 * x[:, 1:2] ** 2 + 0.1)


class EdgeSensitive(torch.nn.Module):
    """A blur with zero padding: like a real U-Net, it is worse near its window's border."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 1, 7, padding=3, bias=False)
        torch.nn.init.constant_(self.conv.weight, 1.0 / 98)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x + 1.0) - 1.0)


def _meta(dtype: str, nodata: float | None, in_ch: int = 2) -> BundleMeta:
    stats = BandStats(
        *(
            v[:in_ch]
            for v in (SOURCE_STATS.mean, SOURCE_STATS.std, SOURCE_STATS.low, SOURCE_STATS.high)
        )
    )
    return BundleMeta(
        in_channels=in_ch,
        out_channels=1,
        source_bands=[f"b{i + 1}" for i in range(in_ch)],
        target_bands=["t1"],
        source_stats=stats.to_dict(),
        target_stats=TARGET_STATS[dtype].to_dict(),
        target_dtype=dtype,
        target_nodata=nodata,
        source_nodata=None,
        chip_size=32,
        model={"num_downs": NUM_DOWNS, "ngf": 4, "norm": "batch", "dropout": 0.0},
    )


def _bundle(module: torch.nn.Module, dtype: str = "float32", nodata: float | None = None) -> Bundle:
    meta = _meta(dtype, nodata)
    return Bundle(meta, "test-weights", Path("."), module.eval())  # type: ignore[arg-type]


def _source(path: Path, h: int = 90, w: int = 110, hole: bool = True) -> tuple[Path, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w]
    b1 = 100 + 80 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    b2 = 50 + 0.4 * yy + 0.2 * xx
    data = np.stack([b1, b2]).round().astype(np.uint16) + 1
    if hole:
        data[:, 10:20, 30:45] = 0
    return write_geotiff(path, data, nodata=0), data


def _one_pass(module: torch.nn.Module, data: np.ndarray, dtype: str) -> np.ndarray:
    """The model on the whole scene at once, in target units (float)."""
    x = torch.from_numpy(normalize(data.astype(np.float32), SOURCE_STATS, band_axis=0))[None]
    with torch.no_grad():
        y = module(x)[0].numpy()
    return denormalize(y, TARGET_STATS[dtype], band_axis=0)


CFG = PredictConfig(tile_size=32, overlap=8, batch_size=5, output_format="gtiff", device="cpu")


@pytest.mark.parametrize(
    ("dtype", "nodata", "expected_nodata"),
    [
        ("uint8", None, 0.0),
        ("uint16", 65535, 65535.0),
        ("float32", None, math.nan),
    ],
)
def test_output_has_the_source_grid_target_dtype_and_nodata(
    tmp_path: Path, dtype: str, nodata: float | None, expected_nodata: float
) -> None:
    src, data = _source(tmp_path / "src.tif")
    out = tmp_path / "pred.tif"
    result = predict_scene(
        _bundle(PixelFunction(), dtype, nodata), SceneConfig(source=str(src)), out, CFG
    )
    with rasterio.open(src) as s, rasterio.open(out) as o:
        assert (o.crs, o.transform, o.width, o.height) == (s.crs, s.transform, s.width, s.height)
        assert o.dtypes == (dtype,) and o.profile["tiled"] and o.compression is not None
        assert o.nodata == expected_nodata or (math.isnan(o.nodata) and math.isnan(expected_nodata))
        assert o.tags()["P2P_MODEL_SHA256"] == "test-weights"
        pred = o.read(1)
    invalid = (data == 0).any(axis=0)
    masked = np.isnan(pred) if math.isnan(expected_nodata) else pred == expected_nodata
    np.testing.assert_array_equal(masked, invalid)
    expected = _one_pass(PixelFunction(), data, dtype)[0]
    if dtype != "float32":
        info = np.iinfo(dtype)
        expected = np.clip(np.rint(expected), info.min, info.max)
    np.testing.assert_allclose(
        pred[~invalid], expected[~invalid], atol=1.0 if dtype != "float32" else 1e-5
    )
    assert result.height == 90 and result.dtype == dtype


def test_tiled_prediction_equals_one_pass_and_shows_no_seam(tmp_path: Path) -> None:
    src, data = _source(tmp_path / "src.tif", 120, 140, hole=False)
    scene = SceneConfig(source=str(src))
    predict_scene(_bundle(PixelFunction()), scene, tmp_path / "a.tif", CFG)
    with rasterio.open(tmp_path / "a.tif") as ds:
        tiled = ds.read(1)
    np.testing.assert_allclose(tiled, _one_pass(PixelFunction(), data, "float32")[0], atol=1e-5)

    # A model with border effects: blended windows agree with one pass away from the outer
    # edge, and steps across window borders look like steps elsewhere.
    predict_scene(_bundle(EdgeSensitive()), scene, tmp_path / "b.tif", CFG)
    with rasterio.open(tmp_path / "b.tif") as ds:
        blended = ds.read(1)
    whole = _one_pass(EdgeSensitive(), data, "float32")[0]
    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(blended - whole)[inner].max() < 0.03 * np.ptp(whole)
    dx = np.abs(np.diff(blended, axis=1))
    borders = [k * 16 - 1 for k in range(1, 140 // 16)]  # stride 16: centre-region borders
    others = [c for c in range(8, 130) if c not in borders]
    ratio = dx[:, borders].mean() / dx[:, others].mean()
    assert 0.8 < ratio < 1.2  # without overlap this model gives 0.44: a visible grid


def test_scene_edges_see_reflected_context(tmp_path: Path) -> None:
    src, data = _source(tmp_path / "src.tif", 50, 61, hole=False)
    config = CFG.model_copy(update={"blend": "none"})  # centres only: exact for radius 3 < 8
    predict_scene(
        _bundle(EdgeSensitive()), SceneConfig(source=str(src)), tmp_path / "p.tif", config
    )
    with rasterio.open(tmp_path / "p.tif") as ds:
        tiled = ds.read(1)
    mirrored = np.pad(data, ((0, 0), (8, 8), (8, 8)), mode="reflect")
    expected = _one_pass(EdgeSensitive(), mirrored, "float32")[0, 8:-8, 8:-8]
    np.testing.assert_allclose(tiled, expected, atol=1e-5)


def test_bad_inputs_fail_before_any_output(tmp_path: Path) -> None:
    src, _ = _source(tmp_path / "src.tif")
    three = write_geotiff(tmp_path / "three.tif", np.ones((3, 40, 40), np.uint16))
    tiny = write_geotiff(tmp_path / "tiny.tif", np.ones((2, 6, 40), np.uint16))
    bundle = _bundle(PixelFunction())
    out = tmp_path / "out" / "pred.tif"
    with pytest.raises(InputError, match="has 3 band"):
        predict_scene(bundle, SceneConfig(source=str(three)), out, CFG)
    with pytest.raises(InputError, match="too small"):
        predict_scene(bundle, SceneConfig(source=str(tiny)), out, CFG)
    with pytest.raises(InputError, match="file not found"):
        predict_scene(bundle, SceneConfig(source=str(tmp_path / "nope.tif")), out, CFG)
    with pytest.raises(ConfigError, match="multiple"):
        predict_scene(
            bundle, SceneConfig(source=str(src)), out, CFG.model_copy(update={"tile_size": 36})
        )
    assert not out.parent.exists() or not list(out.parent.iterdir())


def _write_unet_bundle(model_dir: Path) -> None:
    torch.manual_seed(0)
    generator = UNetGenerator(2, 1, num_downs=NUM_DOWNS, ngf=4, norm="batch", dropout=0.0)
    write_bundle(model_dir, generator.eval(), _meta("uint16", None))


RESUME_SCRIPT = """
import sys, time
from p2p.model.bundle import load_bundle
from p2p.core.config import PredictConfig, SceneConfig
from p2p.infer import strips
from p2p.infer.inference import predict_scene
config = PredictConfig.model_validate_json(sys.argv[4])
slow = lambda done, total: time.sleep(0.3)  # a slow model: leaves time to kill mid-scene
predict_scene(load_bundle(sys.argv[1]), SceneConfig(source=sys.argv[2]), sys.argv[3], config, slow)
"""


@pytest.mark.slow
def test_killed_run_resumes_to_bit_identical_output(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    _write_unet_bundle(model_dir)
    src, _ = _source(tmp_path / "src.tif", h=700, w=48)
    config = CFG.model_copy(update={"output_format": "cog"})
    out = tmp_path / "killed" / "pred.tif"
    state = out.with_name(".pred.tif.state.json")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            RESUME_SCRIPT,
            str(model_dir),
            str(src),
            str(out),
            config.model_dump_json(),
        ],
        env=env,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if state.is_file() and json.loads(state.read_text())["rows_done"] >= 256:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists() and state.is_file()

    bundle = load_bundle(model_dir)
    resumed = predict_scene(bundle, SceneConfig(source=str(src)), out, config)
    fresh = predict_scene(bundle, SceneConfig(source=str(src)), tmp_path / "fresh.tif", config)
    assert resumed.resumed_rows >= 256 and fresh.resumed_rows == 0
    assert not state.exists() and not list(out.parent.glob(".*"))
    with rasterio.open(out) as a, rasterio.open(fresh.output) as b:
        assert a.count == b.count
        for band in range(1, a.count + 1):
            assert a.read(band).tobytes() == b.read(band).tobytes()
    assert cog_validate(str(out))[0]


def test_wide_rows_read_in_column_bands_give_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows are read, prepared and cast a few batches of columns at a time so memory does
    not grow with the scene's width; that must not change a single value."""
    model_dir = tmp_path / "model"
    _write_unet_bundle(model_dir)
    bundle = load_bundle(model_dir)
    src, _ = _source(tmp_path / "src.tif", h=60, w=300)
    pixels = []
    for columns in (1 << 20, 1):  # the whole row at once; one batch of windows at a time
        monkeypatch.setattr(strips, "READ_COLUMNS", columns)
        out = predict_scene(bundle, SceneConfig(source=str(src)), tmp_path / f"{columns}.tif", CFG)
        with rasterio.open(out.output) as ds:
            pixels.append(ds.read())
    np.testing.assert_array_equal(pixels[0], pixels[1])
    assert (pixels[0] > 0).mean() > 0.9


@pytest.mark.slow
def test_cli_predict_killed_mid_scene_reruns_to_the_same_cog(tmp_path: Path) -> None:
    """SIGKILL the installed `p2p predict` right after a commit that carries blend
    accumulators; the same command again writes the bytes of an uninterrupted run, as a COG."""
    model_dir = tmp_path / "model"
    _write_unet_bundle(model_dir)
    src, _ = _source(tmp_path / "src.tif", h=1200, w=40)
    p2p = Path(sys.executable).with_name("p2p")

    def command(folder: str) -> list[str]:
        out = tmp_path / folder / "pred.tif"
        opts = ["--tile-size", "32", "--overlap", "4", "--device", "cpu", "--format", "cog"]
        return [str(p2p), "predict", "--model", str(model_dir), "--input", str(src),
                "--output", str(out), *opts]  # fmt: skip

    subprocess.run(command("full"), check=True, capture_output=True)
    proc = subprocess.Popen(command("killed"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    carried: dict[str, Any] = {}
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not carried:
        for state in (tmp_path / "killed").glob(".p2p-work/predict/*/.src.tif.state.json"):
            record = json.loads(state.read_text() or "{}")
            if record.get("carry") and record["marks"]["window"] >= 4:
                carried = record
                break
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "pred.tif").exists()
    assert carried["rows_done"] < carried["marks"]["strip"] * 24  # rows no block row holds yet
    subprocess.run(command("killed"), check=True, capture_output=True)
    full, resumed = (tmp_path / d / "pred.tif" for d in ("full", "killed"))
    assert resumed.read_bytes() == full.read_bytes()
    assert cog_validate(str(resumed), quiet=True)[:2] == (True, [])
    leftovers = [p.name for p in (tmp_path / "killed").rglob(".src.tif*")]
    assert leftovers == []


def test_predict_stage_caches_under_the_workspace(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    _write_unet_bundle(model_dir)
    src, _ = _source(tmp_path / "src.tif", 40, 40)
    scene = SceneConfig(source=str(src))
    first = predict_stage(tmp_path / "ws", model_dir, scene, CFG)
    again = predict_stage(tmp_path / "ws", model_dir, scene, CFG)
    assert not first.cached and again.cached and again.key == first.key
    expected = tmp_path / "ws" / "predict" / first.key / "src.tif"
    assert first.summary["output"] == str(expected) and expected.is_file()


def test_cli_predicts_one_scene_or_a_mosaic_of_several(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    _write_unet_bundle(model_dir)
    a, _ = _source(tmp_path / "a.tif", 40, 48)
    b, _ = _source(tmp_path / "b.tif", 40, 48)
    base = ["predict", "--model", model_dir, "--tile-size", 32, "--overlap", 4,
            "--format", "gtiff", "--json"]  # fmt: skip
    one = cli([*base, "--input", a, "--output", tmp_path / "one.tif"])  # the installed p2p
    assert one.returncode == 0, one.stderr
    record: dict[str, Any] = json.loads(one.stdout.strip().splitlines()[-1])
    assert record["scenes"] == ["a"] and Path(record["output"]).is_file()
    assert RunRecord.model_validate(record).pipeline == "predict"  # docs/record.schema.json
    two = cli([*base, "--input", a, "--input", b, "--output", tmp_path / "two.tif"])
    assert two.returncode == 0, two.stderr
    assert json.loads(two.stdout.strip().splitlines()[-1])["scenes"] == ["a", "b"]
    with rasterio.open(tmp_path / "one.tif") as o, rasterio.open(tmp_path / "two.tif") as m:
        np.testing.assert_array_equal(o.read(), m.read())  # same footprint: the same pixels
    assert not list(tmp_path.glob(".two.tif*"))
    bad = cli([*base, "--input", tmp_path / "x.tif", "--output", tmp_path / "bad.tif"])
    assert bad.returncode == 1
    assert bad.stderr == f"error: {tmp_path / 'x.tif'}: file not found\n"
    assert not list(tmp_path.glob("*bad.tif*"))
    cfg = cli(["predict", "--model", model_dir, "--input", a, "--output", tmp_path / "bad.tif",
               "--overlap", 300])  # fmt: skip
    assert cfg.returncode == 1
    assert_one_line_error(cfg.returncode, cfg.stderr, "overlap")
