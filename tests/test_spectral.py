"""Spectral fidelity: SAM and normalized-difference indices against hand-computed values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from p2p.core.errors import ConfigError
from p2p.infer.evaluation import evaluate
from p2p.infer.spectral import SAM_BIN, IndexSpec, SpectralAccumulator, parse_index
from tests.faultkit import assert_one_line_error, cli
from tests.rasters import write_geotiff

NAMES = ["nir", "red", "green"]


def test_parse_index_by_name_or_number() -> None:
    assert parse_index("ndvi=nir,red", NAMES) == IndexSpec("ndvi", 0, 1)
    assert parse_index("ndwi=3,1", NAMES) == IndexSpec("ndwi", 2, 0)
    assert parse_index("x = NIR , Green", NAMES) == IndexSpec("x", 0, 2)
    for bad in ("ndvi", "ndvi=nir", "ndvi=nir,blue", "ndvi=4,1", "=nir,red", "n=red,red"):
        with pytest.raises(ConfigError):
            parse_index(bad, NAMES)


def test_sam_of_hand_made_spectra() -> None:
    target = np.array([[1.0, 1.0, 1.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    # angles 0°, 45°, 90° and 0° (a scaled spectrum has the same direction)
    pred = np.array([[1.0, 1.0, 0.0, 5.0], [0.0, 1.0, 1.0, 0.0]])
    acc = SpectralAccumulator(2)
    acc.update(pred[:, :2], target[:, :2])  # two windows add up
    acc.update(pred[:, 2:], target[:, 2:])
    sam = acc.sam()
    assert sam is not None
    assert sam["pixels"] == 4
    assert sam["mean"] == pytest.approx(135 / 4)
    assert sam["p95"] == pytest.approx(90, abs=SAM_BIN * 0.501)  # nearest rank: the 4th of 4


def test_sam_leaves_out_zero_spectra_and_single_bands() -> None:
    acc = SpectralAccumulator(2)
    acc.update(np.array([[0.0, 3.0], [0.0, 4.0]]), np.array([[1.0, 4.0], [1.0, 3.0]]))
    sam = acc.sam()
    assert sam is not None and sam["pixels"] == 1
    assert sam["mean"] == pytest.approx(math.degrees(math.acos(24 / 25)))
    assert SpectralAccumulator(1).sam() is None


def test_index_mae_beside_the_linear_baseline() -> None:
    spec = IndexSpec("ndvi", 0, 1)
    target = np.array([[0.5, 0.3, 0.0], [0.1, 0.3, 0.0]])  # ndvi 2/3, 0, undefined
    pred = np.array([[0.4, 0.3, 0.2], [0.2, 0.1, 0.1]])  # ndvi 1/3, 1/2, 1/3
    linear = np.array([[0.5, 0.2, 0.1], [0.1, 0.2, 0.1]])  # ndvi 2/3, 0, 0
    acc = SpectralAccumulator(2, [spec])
    acc.update(pred, target, linear)
    (score,) = acc.index_scores()
    assert score["pixels"] == 2
    assert score["mae"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert score["linear_mae"] == pytest.approx(0.0)
    assert score["bands"] == [1, 2]
    alone = SpectralAccumulator(2, [spec])
    alone.update(pred, target)
    assert alone.index_scores()[0]["linear_mae"] is None


def test_evaluate_reports_sam_and_indices_on_rasters(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    target = rng.uniform(10, 200, (3, 30, 40)).astype(np.float32)
    pred = (target * rng.uniform(0.8, 1.2, target.shape)).astype(np.float32)
    target[:, 5, 5] = -1  # nodata
    p = write_geotiff(tmp_path / "p.tif", pred)
    t = write_geotiff(tmp_path / "t.tif", target, nodata=-1, descriptions=NAMES)
    result = evaluate(p, t, indices=["ndvi=nir,red", "gr=3,2"])
    json.dumps(result, allow_nan=False)
    valid = ~(target == -1).any(0)
    pv, tv = pred[:, valid].astype(np.float64), target[:, valid].astype(np.float64)
    cos = (pv * tv).sum(0) / np.sqrt((pv**2).sum(0) * (tv**2).sum(0))
    angles = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    sam = result["spectral"]["sam"]
    assert sam["mean"] == pytest.approx(angles.mean(), rel=1e-9)
    assert sam["p95"] == pytest.approx(
        np.percentile(angles, 95, method="inverted_cdf"), abs=SAM_BIN * 0.501
    )
    ndvi, gr = result["spectral"]["indices"]

    def nd(x: np.ndarray, a: int, b: int) -> np.ndarray:
        return (x[a] - x[b]) / (x[a] + x[b])

    assert ndvi["name"] == "ndvi" and ndvi["bands"] == [1, 2] and ndvi["linear_mae"] is None
    assert ndvi["mae"] == pytest.approx(np.abs(nd(pv, 0, 1) - nd(tv, 0, 1)).mean(), rel=1e-9)
    assert gr["mae"] == pytest.approx(np.abs(nd(pv, 2, 1) - nd(tv, 2, 1)).mean(), rel=1e-9)
    with pytest.raises(ConfigError):
        evaluate(p, t, indices=["ndvi=nir,swir"])


def test_cli_evaluate_prints_seams_sam_and_indices(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    target = rng.uniform(10, 200, (2, 20, 24)).astype(np.float32)
    pred = (target + rng.normal(0, 5, target.shape)).astype(np.float32)
    p = write_geotiff(tmp_path / "p.tif", pred)
    t = write_geotiff(tmp_path / "t.tif", target, descriptions=["nir", "red"])
    args = ["evaluate", "--prediction", p, "--target", t, "--index", "ndvi=nir,red"]
    done = cli([*args, "--index", "rev=2,1", "--json"])
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert [ix["name"] for ix in record["spectral"]["indices"]] == ["ndvi", "rev"]
    assert record["spectral"]["sam"]["pixels"] == 20 * 24
    assert record["seams"] is None  # not written by p2p predict: no window layout
    text = cli(args)
    assert text.returncode == 0, text.stderr
    assert "ndvi MAE: " in text.stdout and "spectral angle: mean " in text.stdout
    bad = cli([*args[:-1], "ndvi=nir,swir"])
    assert bad.returncode == 1  # the reference has no such band: a data error
    assert_one_line_error(bad.returncode, bad.stderr, "--index", "swir")
