"""Raster evaluation: matches numpy on the same pixels, aligns grids, fails cleanly."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from p2p.core.errors import AlignmentError, InputError
from p2p.infer.evaluation import evaluate
from tests.faultkit import cli
from tests.rasters import write_geotiff

ORIGIN = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 1000000.0)


@pytest.fixture()
def pair(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    target = rng.uniform(0, 500, (2, 40, 50)).astype(np.float32)
    pred = (target + rng.normal(0, 7, target.shape)).astype(np.float32)
    pred[:, :3, :6] = np.nan  # invalid in the prediction
    target[1, 20:23, 30:35] = -1  # nodata in one reference band → that pixel drops entirely
    p = write_geotiff(tmp_path / "pred.tif", pred)
    t = write_geotiff(tmp_path / "target.tif", target, nodata=-1)
    return p, t, pred, target


def test_metrics_match_numpy_on_pixels_valid_in_both(pair: tuple) -> None:
    p, t, pred, target = pair
    result = evaluate(p, t)
    valid = ~np.isnan(pred).any(axis=0) & ~(target == -1).any(axis=0)
    assert result["pixels"] == int(valid.sum())
    diff = pred[:, valid].astype(np.float64) - target[:, valid].astype(np.float64)
    for b, band in enumerate(result["bands"]):
        span = float(target[b][valid].max() - target[b][valid].min())
        mse = float((diff[b] ** 2).mean())
        assert band["count"] == int(valid.sum())
        assert band["mae"] == pytest.approx(np.abs(diff[b]).mean(), rel=1e-9)
        assert band["rmse"] == pytest.approx(math.sqrt(mse), rel=1e-9)
        assert band["psnr"] == pytest.approx(20 * math.log10(span) - 10 * math.log10(mse))
        assert result["data_range"][b] == pytest.approx(span)
        assert 0.0 < band["ssim"] < 1.0
    assert result["overall"]["mae"] == pytest.approx(np.abs(diff).mean(), rel=1e-9)


def test_identical_rasters_score_perfectly(pair: tuple) -> None:
    p, _, _, _ = pair
    result = evaluate(p, p)
    assert result["overall"]["mae"] == 0.0
    assert all(band["ssim"] == pytest.approx(1.0) for band in result["bands"])


def test_error_map_holds_absolute_error_and_nan_elsewhere(pair: tuple, tmp_path: Path) -> None:
    p, t, pred, target = pair
    out = tmp_path / "err.tif"
    evaluate(p, t, error_map=out)
    valid = ~np.isnan(pred).any(axis=0) & ~(target == -1).any(axis=0)
    with rasterio.open(out) as ds:
        assert ds.dtypes[0] == "float32" and ds.transform == ORIGIN
        err = ds.read()
    np.testing.assert_allclose(err[:, valid], np.abs(pred - target)[:, valid], rtol=1e-6)
    assert np.isnan(err[:, ~valid]).all()


def test_reference_on_another_grid_is_aligned_to_the_prediction(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:50, 0:50]
    field = (3.0 * xx + 2.0 * yy).astype(np.float32)
    pred = write_geotiff(tmp_path / "pred.tif", field[None, :30, :30])
    # the reference starts 10 px right and down: only a 20x20 block overlaps
    shifted = ORIGIN @ Affine.translation(10, 10)
    ref = write_geotiff(
        tmp_path / "ref.tif", field[None, 10:, 10:], transform=shifted, nodata=-9999
    )
    result = evaluate(pred, ref)
    assert result["pixels"] == 400
    assert result["overall"]["mae"] < 1e-4


def test_no_overlap_and_band_mismatch_are_one_line_errors(pair: tuple, tmp_path: Path) -> None:
    p, t, _, _ = pair
    far = write_geotiff(
        tmp_path / "far.tif",
        np.ones((2, 8, 8), np.float32),
        transform=Affine(10.0, 0.0, 900000.0, 0.0, -10.0, 3000000.0),
    )
    with pytest.raises(AlignmentError, match="does not overlap"):
        evaluate(p, far, error_map=tmp_path / "e.tif")
    with pytest.raises(InputError, match="1 band"):
        evaluate(p, t, target_bands=[1], error_map=tmp_path / "e.tif")
    assert not list(tmp_path.glob("*e.tif*"))


def test_cli_evaluate_prints_json_and_one_line_errors(pair: tuple, tmp_path: Path) -> None:
    import json

    p, t, _, _ = pair
    ok = cli(["evaluate", "--prediction", p, "--target", t, "--json"])  # the installed p2p
    assert ok.returncode == 0, ok.stderr
    record = json.loads(ok.stdout.strip().splitlines()[-1])
    assert record["bands"][0]["mae"] > 0
    # the error as users see it: the installed `p2p`, the whole stderr one line
    bad = cli(["evaluate", "--prediction", tmp_path / "nope.tif", "--target", t])
    assert bad.returncode == 1
    assert bad.stderr == f"error: {tmp_path / 'nope.tif'}: file not found\n"
