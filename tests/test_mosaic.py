"""Mosaics: union grid across UTM zones, feathered overlaps without seams, exact copies."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.warp import transform as warp_transform

from p2p.core.cache import read_manifest
from p2p.core.config import MosaicConfig
from p2p.core.errors import ConfigError, InputError
from p2p.infer.mosaic import edge_distance, mosaic_scenes
from p2p.stages.mosaic import run as mosaic_stage
from tests.rasters import write_geotiff

RES = 100.0
NODATA = -9999.0
FEATHER = 16


def _field(crs: str, transform: Affine, h: int, w: int, offset: float) -> np.ndarray:
    """A smooth function of longitude/latitude at each pixel centre (plus an offset)."""
    rows, cols = np.mgrid[0:h, 0:w]
    xs, ys = transform @ (cols.ravel() + 0.5, rows.ravel() + 0.5)
    lon, lat = warp_transform(crs, "EPSG:4326", xs, ys)
    lon, lat = np.asarray(lon).reshape(h, w), np.asarray(lat).reshape(h, w)
    return (1000 + 2000 * (lon - 11.9) + 1500 * (lat - 48.0) + offset).astype(np.float32)


def _scene(tmp_path: Path, name: str, epsg: str, lon: float, offset: float) -> Path:
    x, y = Transformer.from_crs("EPSG:4326", epsg, always_xy=True).transform(lon, 48.2)
    transform = Affine(RES, 0, round(x), 0, -RES, round(y))
    data = _field(epsg, transform, 120, 160, offset)
    return write_geotiff(tmp_path / name, data, crs=epsg, transform=transform, nodata=NODATA)


@pytest.fixture()
def utm_pair(tmp_path: Path) -> tuple[Path, Path]:
    # A in zone 32 (west of 12°E), B in zone 33 (east); they overlap across the zone border.
    # B carries a +20 offset, so a hard cut between them would show a step of 20.
    return (
        _scene(tmp_path, "a.tif", "EPSG:32632", 11.72, 0.0),
        _scene(tmp_path, "b.tif", "EPSG:32633", 11.85, 20.0),
    )


def test_utm_zone_scenes_mosaic_onto_the_union_grid_without_a_seam(
    utm_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    a, b = utm_pair
    out = tmp_path / "mosaic.tif"
    result = mosaic_scenes([a, b], out, MosaicConfig(), feather=FEATHER)
    with rasterio.open(a) as src:
        a_data, a_transform = src.read(1), src.transform
    with rasterio.open(out) as ds:
        m, transform = ds.read(1), ds.transform
        assert ds.crs.to_epsg() == 32632 and result.crs == "EPSG:32632"
        assert ds.res == (RES, RES) and ds.nodata == NODATA
    # the grid is anchored on A's pixels and holds both footprints
    col, row = ~transform @ (a_transform.c, a_transform.f)
    assert (col, row) == (round(col), round(row))
    assert m.shape[1] > 200 and m.shape[0] >= 120
    valid = m != NODATA
    # where only A lies, A's values are copied unchanged
    r0, c0 = round(row), round(col)
    block = m[r0 + 40 : r0 + 80, c0 : c0 + 20]
    np.testing.assert_array_equal(block, a_data[40:80, :20])
    # no seam: across A's right edge (inside B) the step is like the field's own gradient
    dx = np.abs(np.diff(m, axis=1))
    both = valid[:, 1:] & valid[:, :-1]
    edge = c0 + a_data.shape[1] - 1
    rows = slice(r0 + 20, r0 + 100)
    across = dx[rows, edge][both[rows, edge]]
    elsewhere = np.median(dx[both])
    assert across.size > 50
    assert across.mean() < 2.0 * elsewhere  # a hard cut would add a step of 20
    hard_cut = np.abs(a_data[60, -1] - (a_data[60, -1] + 20))
    assert elsewhere < hard_cut / 5


def test_mosaic_of_one_scene_reproduces_it_and_writes_a_cog(
    utm_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    a, _ = utm_pair
    out = tmp_path / "one.tif"
    mosaic_scenes([a], out, MosaicConfig(), output_format="cog")
    with rasterio.open(a) as src, rasterio.open(out) as ds:
        np.testing.assert_array_equal(ds.read(), src.read())
        assert ds.transform == src.transform and ds.crs == src.crs
        assert ds.profile["tiled"] and ds.compression.name.lower() == "deflate"


def test_output_crs_and_resolution_can_be_set(utm_pair: tuple[Path, Path], tmp_path: Path) -> None:
    result = mosaic_scenes(
        list(utm_pair), tmp_path / "m.tif", MosaicConfig(crs="EPSG:32633", resolution=200.0)
    )
    with rasterio.open(result.output) as ds:
        assert ds.crs.to_epsg() == 32633 and ds.res == (200.0, 200.0)
        assert (ds.read(1) != NODATA).mean() > 0.6


def test_bad_inputs_fail_before_writing(utm_pair: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = utm_pair
    other = write_geotiff(tmp_path / "u8.tif", np.ones((1, 16, 16), np.uint8))
    with pytest.raises(InputError, match="must match"):
        mosaic_scenes([a, other], tmp_path / "m.tif", MosaicConfig())
    with pytest.raises(InputError, match="file not found"):
        mosaic_scenes([a, tmp_path / "missing.tif"], tmp_path / "m.tif", MosaicConfig())
    with pytest.raises(ConfigError, match="unknown CRS"):
        mosaic_scenes([a], tmp_path / "m.tif", MosaicConfig(crs="EPSG:999999"))
    assert not list(tmp_path.glob("*m.tif*"))


def test_mosaic_stage_caches_its_output(utm_pair: tuple[Path, Path], tmp_path: Path) -> None:
    paths = [str(p) for p in utm_pair]
    first = mosaic_stage(tmp_path / "ws", paths, MosaicConfig(), "gtiff")
    again = mosaic_stage(tmp_path / "ws", paths, MosaicConfig(), "gtiff")
    assert not first.cached and again.cached and again.key == first.key
    assert Path(first.summary["output"]).is_file()
    assert read_manifest(first.path) is not None


def test_edge_distance_is_euclidean_and_capped() -> None:
    valid = np.ones((41, 41), bool)
    valid[20, 20] = False
    d = edge_distance(valid, cap=10)
    rows, cols = np.mgrid[0:41, 0:41]
    expected = np.minimum(np.hypot(rows - 20, cols - 20), 10)
    np.testing.assert_allclose(d, expected)
    assert (edge_distance(np.ones((5, 5), bool), 7) == 7).all()


KILLED_MOSAIC = """
import os, signal, sys
from p2p.core.config import MosaicConfig
from p2p.infer.mosaic import mosaic_scenes

a, b, out, fmt, kill_after = sys.argv[1:6]

def progress(done, total):
    if done >= int(kill_after) > 0:
        os.kill(os.getpid(), signal.SIGKILL)  # a crash or kill -9 between strips

mosaic_scenes([a, b], out, MosaicConfig(), output_format=fmt, feather=16, progress=progress)
"""


@pytest.mark.parametrize("fmt", ["gtiff", "cog"])
def test_killed_mosaic_resumes_by_strip_bit_identical(tmp_path: Path, fmt: str) -> None:
    # two overlapping tall scenes: a 3-strip mosaic (strips of 512 rows)
    ta, tb = Affine(RES, 0, 500000, 0, -RES, 5200000), Affine(RES, 0, 505000, 0, -RES, 5190000)
    a, b = (
        write_geotiff(
            tmp_path / f"{name}.tif",
            _field("EPSG:32632", t, 1100, 90, offset),
            crs="EPSG:32632",
            transform=t,
            nodata=NODATA,
        )
        for name, t, offset in (("a", ta, 0.0), ("b", tb, 20.0))
    )

    def run(out: Path, kill_after: int) -> subprocess.CompletedProcess[str]:
        args = [str(a), str(b), str(out), fmt, str(kill_after)]
        cmd = [sys.executable, "-c", KILLED_MOSAIC, *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    whole = tmp_path / "whole" / "m.tif"
    assert run(whole, 0).returncode == 0
    out = tmp_path / "resumed" / "m.tif"
    killed = run(out, 1)  # killed after the first strip was written and recorded
    assert killed.returncode == -signal.SIGKILL and not out.exists()
    state = json.loads((out.parent / ".m.tif.state.json").read_text())
    assert state["rows_done"] == 512
    with rasterio.open(out.parent / ".m.tif.partial.tif") as partial:
        assert partial.height == 1200  # rows of both scenes (10 km apart in y)
    assert run(out, 0).returncode == 0
    assert out.read_bytes() == whole.read_bytes()
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.tif"]
