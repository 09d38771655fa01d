"""`p2p predict --uncertainty`: the uncertainty raster is mosaicked like the prediction and
delivered beside the output (a copy for one scene on its own grid, a blend for several)."""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from p2p.core.config import MosaicConfig, PredictConfig, SceneConfig
from p2p.stages.pipeline import PREDICTION, PredictionJob, in_process, run_pipeline
from p2p.stages.record import RunRecord
from tests.faultkit import P2P, UTM, write_scene, write_tiny_bundle

CFG = PredictConfig(tile_size=32, overlap=4, batch_size=4, device="cpu", uncertainty=True)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bundle(tmp_path_factory.mktemp("bundle") / "model")


def _read(path: str | Path) -> tuple[np.ndarray, tuple[object, ...], dict[str, str]]:
    with rasterio.open(path) as ds:
        layout = ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT")
        return ds.read(), (ds.crs, ds.transform, ds.width, ds.height), {"layout": str(layout)}


def _predict(
    tmp_path: Path,
    model: Path,
    scenes: list[Path],
    config: PredictConfig,
    reports: list[tuple[int, int]] | None = None,
) -> dict:
    def progress(label: str) -> Callable[[int, int], None] | None:
        return (lambda done, total: reports.append((done, total))) if (
            reports is not None and label == "mosaic") else None  # fmt: skip

    job = PredictionJob(
        str(tmp_path / "ws"),
        str(model),
        [SceneConfig(source=str(s)) for s in scenes],
        config,
        MosaicConfig(),
        str(tmp_path / "out.tif"),
    )
    return run_pipeline(PREDICTION, job, in_process(progress))


def test_one_scene_delivers_its_uncertainty_beside_the_output(tmp_path: Path, model: Path) -> None:
    scene = write_scene(tmp_path / "scene.tif", height=70, width=50)
    record = _predict(tmp_path, model, [scene], CFG)
    RunRecord.model_validate(record)
    spread_path = tmp_path / "out.uncertainty.tif"
    assert record["uncertainty"] == str(spread_path) and record["written"]
    assert record["output"] == str(tmp_path / "out.tif")
    _, grid, meta = _read(tmp_path / "out.tif")
    spread, spread_grid, spread_meta = _read(spread_path)
    assert spread_grid == grid and spread.dtype == np.float32
    assert meta["layout"] == spread_meta["layout"] == "COG"
    # the copy holds the scene's own uncertainty raster, value for value
    scene_record = record["stages"]["predict:scene"]
    np.testing.assert_array_equal(
        spread, _read(Path(scene_record["path"]) / "scene.uncertainty.tif")[0]
    )
    with rasterio.open(spread_path) as ds:
        assert ds.tags()["P2P_LAYER"] == "uncertainty" and math.isnan(ds.nodata)
    assert (spread[~np.isnan(spread)] >= 0).all() and np.nanmean(spread) > 0
    again = _predict(tmp_path, model, [scene], CFG)  # cached and unchanged: nothing rewritten
    assert again["written"] is False and again["uncertainty"] == str(spread_path)


def test_several_scenes_blend_their_uncertainty_onto_the_mosaic_grid(
    tmp_path: Path, model: Path
) -> None:
    east = UTM @ Affine.translation(30, 0)  # 30 columns east: 20 columns overlap
    left = write_scene(tmp_path / "left.tif", height=40, width=50)
    right = write_scene(tmp_path / "right.tif", height=40, width=50, transform=east)
    reports: list[tuple[int, int]] = []
    record = _predict(tmp_path, model, [left, right], CFG, reports)
    # both mosaics report as one of twice the windows (the stall watchdog hears from both)
    assert reports[-1] == (2, 2) and reports[0] == (1, 2)
    _, grid, _ = _read(tmp_path / "out.tif")
    spread, spread_grid, meta = _read(record["uncertainty"])
    with rasterio.open(record["uncertainty"]) as ds:
        assert ds.tags()["P2P_LAYER"] == "uncertainty" and "P2P_UNCERTAINTY" in ds.tags()
    assert spread_grid == grid == (grid[0], UTM, 80, 40) and meta["layout"] == "COG"
    own = [
        _read(Path(record["stages"][f"predict:{name}"]["path"]) / f"{name}.uncertainty.tif")[0]
        for name in ("left", "right")
    ]
    # where one scene alone covers the grid, its spread is copied; the overlap lies between
    np.testing.assert_array_equal(spread[:, :, :30], own[0][:, :, :30])
    np.testing.assert_array_equal(spread[:, :, 50:], own[1][:, :, 20:])
    low = np.minimum(own[0][:, :, 30:], own[1][:, :, :20]) - 1e-4
    high = np.maximum(own[0][:, :, 30:], own[1][:, :, :20]) + 1e-4
    assert ((spread[:, :, 30:50] >= low) & (spread[:, :, 30:50] <= high)).all()
    plain = _predict(tmp_path / "plain", model, [left, right], CFG.model_copy(
        update={"uncertainty": False}))  # fmt: skip
    assert plain["uncertainty"] is None and not (tmp_path / "plain/out.uncertainty.tif").exists()
    mosaics = [r["key"] for r in (record, plain) for k, r in r["stages"].items() if k == "mosaic"]
    assert mosaics[0] != mosaics[1]  # the setting is part of the mosaic stage's key


def test_cli_predict_uncertainty_names_the_raster(tmp_path: Path, model: Path) -> None:
    scene = write_scene(tmp_path / "scene.tif", height=40, width=40)
    out = tmp_path / "out.tif"
    command = [str(P2P), "predict", "--model", str(model), "--input",
               str(scene), "--output", str(out), "--tile-size", "32", "--device", "cpu",
               "--uncertainty"]  # fmt: skip
    done = subprocess.run([*command, "--json"], capture_output=True, text=True, check=True)
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["uncertainty"] == str(tmp_path / "out.uncertainty.tif")
    assert (tmp_path / "out.uncertainty.tif").is_file()
    text = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert f"uncertainty: {tmp_path / 'out.uncertainty.tif'}" in text
    bad = subprocess.run([*command, "--no-tta"], capture_output=True, text=True)
    assert bad.returncode == 1 and "tta" in bad.stderr
