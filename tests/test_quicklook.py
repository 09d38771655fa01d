"""Quicklooks: bands by name or number, read from the overviews (never the full bands), and
`p2p predict --quicklook` writing one beside its output."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.enums import Resampling

from p2p.core.config import MosaicConfig
from p2p.core.errors import InputError
from p2p.infer.quicklook import pick_bands, quicklook_png
from p2p.infer.report import train_report
from p2p.model.preview import preview_grid, write_preview
from p2p.stages import mosaic
from tasks.common import folded
from tests.faultkit import PREDICT_OPTS, UTM, cli, write_scene, write_tiny_bundle
from tests.rasters import write_geotiff


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_bands_by_name_or_number() -> None:
    names = ["red", "green", "blue", "nir"]
    assert pick_bands(names, None) == [1, 2, 3]
    assert pick_bands(names, ["nir", "red", "2"]) == [4, 1, 2]
    assert pick_bands(["t1"], None) == [1]
    with pytest.raises(InputError, match="no band 'swir'; the bands are red, green, blue, nir"):
        pick_bands(names, ["swir"])
    with pytest.raises(InputError, match="give 1 band"):
        pick_bands(names, ["1", "2"])


def test_a_quicklook_reads_the_overviews(tmp_path: Path) -> None:
    path = tmp_path / "big.tif"
    ramp = np.add.outer(np.arange(512), np.arange(512)).astype(np.float32)[None]
    profile = {"driver": "GTiff", "width": 512, "height": 512, "count": 1, "dtype": "float32",
               "crs": "EPSG:32633", "transform": UTM, "tiled": True}  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(ramp)
        ds.build_overviews([2, 4, 8], Resampling.average)
    with rasterio.open(path, "r+") as ds:
        ds.write(np.full_like(ramp, 7.0))  # full resolution now flat; the overviews keep the ramp
    small, full = _pixels(quicklook_png(path, size=64)), _pixels(quicklook_png(path, size=512))
    assert small.shape == (64, 64, 3) and full.shape == (512, 512, 3)
    assert len(np.unique(small)) > 100  # the ramp: read from an overview
    assert len(np.unique(full)) == 1  # the flat full-resolution band


def test_predict_quicklook_beside_the_output(tmp_path: Path) -> None:
    model = write_tiny_bundle(tmp_path / "model")
    scene = write_scene(tmp_path / "scene.tif")
    out = tmp_path / "out.tif"
    args = ["predict", "--model", model, "--input", scene, "--output", out, *PREDICT_OPTS]
    bad = cli([*args, "--quicklook-bands", "t9"])
    assert bad.stderr == "error: --quicklook-bands: no band 't9'; the bands are t1\n"
    assert not out.exists()
    done = cli([*args, "--quicklook-bands", "t1"])
    assert done.returncode == 0, done.stderr
    picture = tmp_path / "out.quicklook.png"
    assert done.stdout.splitlines()[-1] == f"quicklook: {picture}"
    assert _pixels(picture.read_bytes()).shape == (64, 64, 3)


def test_evaluate_draws_the_largest_median_and_smallest_error(tmp_path: Path) -> None:
    target = np.add.outer(np.arange(256), np.arange(256)).astype(np.float32)[None] + 100
    error = np.full_like(target, 10.0)
    error[:, 128:, :128] = 400.0  # the largest error: bottom left
    error[:, :128, :128] = 0.0  # the smallest: top left
    ref = write_geotiff(tmp_path / "ref.tif", target, transform=UTM, blocksize=64)
    pred = write_geotiff(tmp_path / "pred.tif", target + error, transform=UTM, blocksize=64)
    done = cli(["evaluate", "--prediction", pred, "--target", ref])
    assert done.returncode == 0, done.stderr
    picture = tmp_path / "pred.evaluate.png"
    assert done.stdout.splitlines()[-1] == f"picture: {picture}"
    pixels = _pixels(picture.read_bytes())
    # 3 panels (no --source) of 128 px tiles drawn at 256 px, 3 rows under their captions
    assert pixels.shape == (18 + 3 * (18 + 256 + 6), 3 * 256 + 2 * 6, 3)
    error_panels = [pixels[36 + r * 280 : 36 + r * 280 + 256, 2 * 262 :] for r in range(3)]
    brightness = [float(p.mean()) for p in error_panels]
    assert brightness[0] > brightness[1] > brightness[2] == 0.0  # largest, median, smallest
    again = cli(["evaluate", "--prediction", pred, "--target", ref, "--no-picture", "--json"])
    assert json.loads(again.stdout.splitlines()[-1])["picture"] is None


def test_previews_draw_chips_at_256_px_and_reports_name_the_bands(tmp_path: Path) -> None:
    chips = [tuple(torch.rand(c, 32, 32) * 2 - 1 for c in (2, 1, 1, 1)) for _ in range(2)]
    grid = preview_grid(chips)
    assert grid.shape == (2 * (256 + 2), 4 * (256 + 2), 3)
    first = grid[:256, :256]
    assert (first == first[::8, ::8].repeat(8, 0).repeat(8, 1)).all()  # 8x8 squares: nearest
    preview = tmp_path / "preview.png"
    write_preview(preview, chips)
    model = write_tiny_bundle(tmp_path / "model")
    metrics = {"bands": [{"mae": 1.0, "rmse": 2.0, "psnr": 3.0, "ssim": 0.5}], "overall": {}}
    summary = {"model": str(model), "epochs": 1, "kept_epoch": 1, "metrics": metrics}
    report = train_report({**summary, "preview": str(preview)})
    assert "## Last preview: source (b1, b2) | generated | target (t1) | error" in report
    assert "| t1 | 1 | 2 | 3 | 0.5 |" in report


def test_the_mosaic_stage_reports_its_quicklook(tmp_path: Path) -> None:
    scene = write_scene(tmp_path / "pred.tif", bands=1, height=96, width=80)
    record = mosaic.run(str(tmp_path / "ws"), [str(scene)], MosaicConfig(), "cog")
    report = mosaic.STAGE.report
    assert report is not None
    shown = report(record, {})
    assert shown is not None and shown.title == "Mosaic quicklook"
    assert "Mosaic quicklook (80 x 96 px, EPSG:32633)" in shown.markdown
    encoded = shown.markdown.split("data:image/png;base64,")[1].split(")")[0]
    assert _pixels(base64.b64decode(encoded)).shape == (96, 80, 3)
    # on Prefect the record is folded into the report: one card, not a report and a table
    card = folded(shown, record, "mosaic").markdown
    assert card.startswith(shown.markdown.rstrip("\n"))
    assert card.endswith(f"## Stage mosaic\n\nbuilt in {record.seconds:.1f} s; key "
                         f"`{record.key}`, folder `{record.path}`\n")  # fmt: skip
