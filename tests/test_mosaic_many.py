"""Mosaics of many scenes: exact blends through the window shortcuts, few files open at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from p2p.core.config import MosaicConfig
from p2p.infer.mosaic import mosaic_scenes
from p2p.infer.mosaic_blend import edge_distance
from p2p.raster import geotiff
from tests.rasters import write_geotiff

FEATHER = 16
SIDE = 300
STEP = 260  # neighbours overlap by 40 pixels


def _scenes(tmp_path: Path) -> list[Path]:
    """3 x 2 noisy uint16 scenes on one 10 m grid; one with a nodata hole, one with a nodata
    border column (footprints that are not boxes), the rest plain boxes."""
    rng = np.random.default_rng(0)
    paths = []
    for k in range(6):
        row, col = divmod(k, 3)
        data = rng.integers(1000, 3000, (1, SIDE, SIDE)).astype(np.uint16)
        if k == 1:
            data[:, 120:160, 100:170] = 0
        if k == 4:
            data[:, :, :25] = 0
        t = Affine(10, 0, 500000 + 10 * STEP * col, 0, -10, 1000000 - 10 * STEP * row)
        paths.append(write_geotiff(tmp_path / f"s{k}.tif", data, transform=t, nodata=0))
    return paths


def _whole_canvas_blend(paths: list[Path], shape: tuple[int, int], cols: int = 3) -> np.ndarray:
    """The blend the mosaic promises, computed over the whole canvas at once: each scene (`cols`
    to a row, `STEP` apart) weighted by its capped distance to its nearest invalid pixel (any
    band at the file's nodata), weights normalized, cast with nodata 0 as the mosaic casts."""
    placed = []
    for k, path in enumerate(paths):
        row, col = divmod(k, cols)
        with rasterio.open(path) as ds:
            pixels, nodata = ds.read(), ds.nodata
        data = np.zeros((pixels.shape[0], *shape))
        valid = np.zeros(shape, bool)
        window = (slice(row * STEP, row * STEP + SIDE), slice(col * STEP, col * STEP + SIDE))
        data[(slice(None), *window)] = pixels
        valid[window] = (pixels != nodata).all(axis=0)
        placed.append((data, edge_distance(valid, FEATHER)))
    total = sum(weight for _, weight in placed)
    safe = np.where(total > 0, total, 1.0)
    values = np.zeros(placed[0][0].shape)
    for data, weight in placed:
        share = weight / safe
        values += np.where(share > 0, data * share, 0.0)
    return geotiff.to_dtype(values, total > 0, "uint16", 0)


def test_mosaic_of_many_scenes_is_the_whole_canvas_blend(tmp_path: Path) -> None:
    paths = _scenes(tmp_path)
    out = tmp_path / "m.tif"
    result = mosaic_scenes(paths, out, MosaicConfig(), feather=FEATHER)
    shape = (STEP + SIDE, 2 * STEP + SIDE)
    assert (result.height, result.width) == shape  # two window columns, two strips
    with rasterio.open(out) as ds:
        mosaic = ds.read()
    expected = _whole_canvas_blend(paths, shape)
    assert (mosaic == 0).sum() > 0 and (mosaic != 0).sum() > 0
    np.testing.assert_array_equal(mosaic, expected)


def test_pixels_one_scene_alone_covers_are_cast_as_the_blend_casts_them(tmp_path: Path) -> None:
    # the second scene's nodata is 7, so its valid pixels may hold 0, the mosaic's nodata (the
    # first scene's): copied where it lies alone, blended in the overlap, each moved to 1
    rng = np.random.default_rng(2)
    paths = []
    for k, nodata in enumerate((0, 7)):
        data = rng.integers(10, 3000, (2, SIDE, SIDE)).astype(np.uint16)
        if k == 1:
            data[1, 100:110, ::5] = 0  # valid, across the overlap (columns < 40) and beyond
            data[:, 200:230, 20:90] = 7  # a hole reaching into the overlap
        t = Affine(10, 0, 500000 + 10 * STEP * k, 0, -10, 1000000)
        paths.append(write_geotiff(tmp_path / f"n{k}.tif", data, transform=t, nodata=nodata))
    out = tmp_path / "m.tif"
    mosaic_scenes(paths, out, MosaicConfig(), feather=FEATHER)
    with rasterio.open(out) as ds:
        mosaic = ds.read()
    np.testing.assert_array_equal(mosaic, _whole_canvas_blend(paths, (SIDE, STEP + SIDE)))
    assert (mosaic[1, 100:110, SIDE + 5 : STEP + SIDE : 5] == 1).all()  # alone: 0 became 1


FEW_FILES = """
import os, resource, sys
import rasterio
from p2p.core.config import MosaicConfig
from p2p.infer.mosaic import mosaic_scenes

out, *inputs = sys.argv[1:]
with rasterio.open(inputs[0]) as ds:  # GDAL, PROJ and their files loaded before counting
    ds.read(1)
    from rasterio.warp import transform_bounds
    transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
held = len(os.listdir("/proc/self/fd"))
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (held + 16, hard))
mosaic_scenes(inputs, out, MosaicConfig(), output_format="gtiff", feather=8)
"""


def test_a_mosaic_of_more_scenes_than_files_it_may_open(tmp_path: Path) -> None:
    # 40 scenes stacked in a column: each strip of the mosaic meets a few of them, and only
    # those are open (a continent's scenes outnumber the files a process may hold open)
    rng = np.random.default_rng(1)
    column = rng.integers(1, 60000, (1, 40 * 100, 24)).astype(np.uint16)
    inputs = []
    for k in range(40):
        t = Affine(10, 0, 500000, 0, -10, 1000000 - 10 * 100 * k)
        inputs.append(str(write_geotiff(tmp_path / f"c{k}.tif", column[:, 100 * k : 100 * (k + 1)],
                                        transform=t, nodata=0)))  # fmt: skip
    out = tmp_path / "m.tif"
    cmd = [sys.executable, "-c", FEW_FILES, str(out), *inputs]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with rasterio.open(out) as ds:
        np.testing.assert_array_equal(ds.read(), column)  # side by side: each pixel copied


def test_a_scene_on_the_grids_lattice_reads_its_pixels_shifted(tmp_path: Path) -> None:
    from rasterio.crs import CRS
    from rasterio.windows import Window

    from p2p.raster import Grid, open_aligned

    data = np.arange(1, 1 + 2 * 30 * 40, dtype=np.uint16).reshape(2, 30, 40)
    data[:, 5, 7] = 0  # a nodata pixel
    t = Affine(10, 0, 500000 + 10 * 13, 0, -10, 1000000 - 10 * 6)
    path = write_geotiff(tmp_path / "s.tif", data, transform=t, nodata=0)
    grid = Grid(CRS.from_epsg(32633), Affine(10, 0, 500000, 0, -10, 1000000), 50, 30)
    with open_aligned(path, grid) as reader:  # the scene sits at row 6, col 13 of the grid
        got, valid = reader.read(Window(-5, -4, 70, 45))  # past the grid's edges and the file's
    expected = np.zeros((2, 45, 70), np.uint16)
    expected[:, 10:34, 18:55] = data[:, :24, :37]  # the grid ends at row 30, col 50
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(valid, expected[0] != 0)
