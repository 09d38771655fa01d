"""`p2p evaluate --uncertainty`: the rank correlation of an uncertainty raster with the absolute
error and the error of its most and least uncertain deciles, against hand-computed values."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio

from p2p.infer.calibration import UncertaintyAccumulator, average_ranks, spearman
from p2p.infer.evaluation import evaluate
from tests.faultkit import P2P, UTM


def _write(path: Path, data: np.ndarray, nodata: float) -> Path:
    """A float32 GeoTIFF of `(C, H, W)` data on the faultkit grid."""
    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1],
               "count": data.shape[0], "dtype": "float32", "crs": "EPSG:32633",
               "transform": UTM, "nodata": nodata}  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data.astype(np.float32))
    return path


# 10 pixels (2 x 5): |error| = 1..10, uncertainty ranks 2,1,3,4,5,6,7,8,10,9.
ERROR = np.arange(1.0, 11.0)
SPREAD = np.array([2.0, 1.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0, 9.0])


def _rasters(tmp_path: Path) -> tuple[Path, Path, Path]:
    target = np.full((1, 2, 5), 100.0)
    pred = target + ERROR.reshape(1, 2, 5) * np.where(np.arange(10) % 2, 1, -1).reshape(1, 2, 5)
    return (
        _write(tmp_path / "pred.tif", pred, -9999.0),
        _write(tmp_path / "target.tif", target, -9999.0),
        _write(tmp_path / "u.tif", SPREAD.reshape(1, 2, 5), math.nan),
    )


def test_rank_correlation_and_deciles_match_hand_computed_values(tmp_path: Path) -> None:
    pred, target, spread = _rasters(tmp_path)
    scored = evaluate(pred, target, uncertainty=spread)["uncertainty"]
    band = scored["bands"][0]
    # two swapped pairs, each d^2 = 1 twice: sum d^2 = 4; rho = 1 - 6*4 / (10 * 99) = 0.97576
    assert band["spearman"] == pytest.approx(1 - 24 / 990)
    # a tenth of 10 pixels is one: the most uncertain (10.0) has error 9, the least (1.0) 2
    assert band["mae_most_uncertain"] == 9.0 and band["mae_least_uncertain"] == 2.0
    assert band["pixels"] == band["sampled"] == 10 and scored["method"] == "all valid pixels"
    assert scored["path"] == str(spread)


def test_nodata_pixels_and_ties_are_handled(tmp_path: Path) -> None:
    pred, target, _ = _rasters(tmp_path)
    u = np.array([1.0, 1.0, 2.0, 2.0, 5.0, 6.0, 7.0, 8.0, 9.0, math.nan]).reshape(1, 2, 5)
    scored = evaluate(pred, target, uncertainty=_write(tmp_path / "ties.tif", u, math.nan))
    band = scored["uncertainty"]["bands"][0]
    # 9 pixels (the NaN is left out); ties share ranks 1.5 and 3.5, errors rank 1..9
    ranks = np.array([1.5, 1.5, 3.5, 3.5, 5, 6, 7, 8, 9])
    expected = np.corrcoef(ranks, np.arange(1, 10))[0, 1]
    assert band["spearman"] == pytest.approx(expected) and band["pixels"] == 9
    assert band["mae_most_uncertain"] == 9.0 and band["mae_least_uncertain"] == 1.0
    assert scored["overall"]["mae"] == pytest.approx(5.5)  # the other scores keep all 10


def test_average_ranks_and_spearman_edge_cases() -> None:
    np.testing.assert_array_equal(average_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1, 3.5, 2])
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    assert spearman(np.ones(5), np.arange(5.0)) is None and spearman(np.ones(1), np.ones(1)) is None


def test_a_large_scene_is_subsampled_reproducibly() -> None:
    rng = np.random.default_rng(1)
    error = rng.random((1, 200_000))
    u = error + rng.normal(0, 0.3, error.shape)
    full, twice = (UncertaintyAccumulator(1, 200_000, max_samples=20_000) for _ in range(2))
    for acc in (full, twice):
        for start in range(0, 200_000, 50_000):  # four windows
            acc.update(u[:, start : start + 50_000], error[:, start : start + 50_000])
    a, b = full.compute(["t1"]), twice.compute(["t1"])
    assert a == b and a["method"] == "random subsample, seed 0"
    band = a["bands"][0]
    assert 19_000 < band["sampled"] < 21_000 and band["pixels"] == 200_000
    exact = spearman(u[0], error[0])
    assert exact is not None and band["spearman"] == pytest.approx(exact, abs=0.02)


def test_cli_prints_and_records_the_uncertainty_scores(tmp_path: Path) -> None:
    pred, target, spread = _rasters(tmp_path)
    command = [str(P2P), "evaluate", "--prediction", str(pred), "--target", str(target),
               "--uncertainty", str(spread), "--no-picture"]  # fmt: skip
    done = subprocess.run([*command, "--json"], capture_output=True, text=True, check=True)
    record = json.loads(done.stdout)
    assert record["uncertainty"]["bands"][0]["spearman"] == pytest.approx(1 - 24 / 990)
    text = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert "uncertainty band_1: spearman 0.976 with |error|, MAE 9 in the most / 2 in" in text
    missing = [str(tmp_path / "no.tif") if a == str(spread) else a for a in command]
    bad = subprocess.run(missing, capture_output=True, text=True)
    assert bad.returncode == 1 and "no.tif" in bad.stderr
