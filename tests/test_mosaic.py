"""Mosaics: union grid across UTM zones, feathered overlaps without seams, exact copies."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.warp import transform as warp_transform
from rio_cogeo.cogeo import cog_validate

from p2p.core.cache import read_manifest
from p2p.core.config import MosaicConfig
from p2p.core.errors import ConfigError, InputError
from p2p.infer.mosaic import mosaic_scenes
from p2p.infer.mosaic_blend import edge_distance
from p2p.raster import Grid, geotiff
from p2p.stages.mosaic import run as mosaic_stage
from tests.faultkit import UTM, cli, unshare_works, write_tiny_bundle
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
    # on its own grid, but tiled in 64 px and uncompressed: blended into p2p's layout, not copied
    assert not mosaic_scenes([a], out, MosaicConfig(), output_format="cog").copied
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

*inputs, out, fmt, kill_after = sys.argv[1:]

def progress(done, total):
    if done >= int(kill_after) > 0:
        os.kill(os.getpid(), signal.SIGKILL)  # a crash or kill -9 between strips

mosaic_scenes(inputs, out, MosaicConfig(), output_format=fmt, feather=16, progress=progress)
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


# --- one input already on the mosaic grid: a tagged copy of its file, not a blend -----------

PREDICTION_TAGS = {"P2P_SCENE": "s", "P2P_MODEL_SHA256": "ab" * 32}


def _ramps(dtype: str, nodata: float) -> np.ndarray:
    """`(2, 300, 520)` noisy ramps, nodata in both bands over a block."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:300, 0:520]
    data = np.stack([1000 + 100 * b + y + 2 * x + rng.normal(0, 5, y.shape) for b in range(2)])
    data = data.astype(dtype)
    data[:, 20:90, 300:450] = nodata
    return data


def _prediction(
    path: Path, data: np.ndarray, nodata: float, rows: Sequence[int] | None = None
) -> Path:
    """`data` written as `predict_scene` writes: `geotiff.create` with tags, then block rows
    (in the order `rows`; top down by default)."""
    grid = Grid(CRS.from_epsg(32633), UTM, data.shape[2], data.shape[1])
    geotiff.create(path, grid, 2, str(data.dtype), nodata, PREDICTION_TAGS, ["t1", "t2"])
    for row in range(0, grid.height, geotiff.BLOCK) if rows is None else rows:
        geotiff.write_rows(path, data[:, row : row + geotiff.BLOCK], row)
    return path


def _tiles(path: Path) -> list[bytes]:
    """The compressed bytes of every full-resolution tile, row by row."""
    with rasterio.open(path) as ds, path.open("rb") as f:
        tiles = []
        for by in range(math.ceil(ds.height / geotiff.BLOCK)):
            for bx in range(math.ceil(ds.width / geotiff.BLOCK)):
                offset = ds.get_tag_item(f"BLOCK_OFFSET_{bx}_{by}", "TIFF", bidx=1)
                f.seek(int(offset))
                tiles.append(f.read(int(ds.get_tag_item(f"BLOCK_SIZE_{bx}_{by}", "TIFF", bidx=1))))
        return tiles


@pytest.mark.parametrize("fmt", ["gtiff", "cog"])
@pytest.mark.parametrize(("dtype", "nodata"), [("uint16", 0.0), ("float32", math.nan)])
def test_one_input_on_the_mosaic_grid_is_copied_tile_for_tile(
    tmp_path: Path, dtype: str, nodata: float, fmt: str
) -> None:
    src = _prediction(tmp_path / "pred.tif", _ramps(dtype, nodata), nodata)
    out = tmp_path / "out" / "m.tif"
    result = mosaic_scenes([src], out, MosaicConfig(), output_format=fmt)
    # the blend's answer for the same pixels: the input twice, each with a share of exactly 0.5
    blend = mosaic_scenes([src, src], tmp_path / "b.tif", MosaicConfig(), output_format=fmt)
    assert result.copied and not blend.copied
    with rasterio.open(src) as a, rasterio.open(out) as m, rasterio.open(blend.output) as b:
        pixels = a.read()
        assert (np.isnan(pixels) if math.isnan(nodata) else pixels == nodata).any()
        np.testing.assert_array_equal(m.read(), pixels)  # NaN equals NaN here
        np.testing.assert_array_equal(m.read(), b.read())
        assert (m.crs, m.transform, m.shape, m.dtypes) == (a.crs, a.transform, a.shape, a.dtypes)
        np.testing.assert_array_equal(m.nodatavals, a.nodatavals)
        # the prediction's provenance stays; the mosaic's tags are added
        assert m.tags() == a.tags() | {"P2P_MOSAIC_INPUTS": "1", "P2P_FEATHER": "64"}
        assert m.descriptions == ("t1", "t2")
    assert _tiles(out) == _tiles(src)
    if fmt == "cog":
        assert cog_validate(str(out), quiet=True)[:2] == (True, [])
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.tif"]


@pytest.mark.parametrize(
    ("change", "config", "nodata"),
    [
        ("crs", MosaicConfig(crs="EPSG:32632"), None),
        ("resolution", MosaicConfig(resolution=20.0), None),
        ("nodata", MosaicConfig(), 7.0),
    ],
)
def test_one_input_onto_another_grid_or_nodata_is_blended(
    tmp_path: Path, change: str, config: MosaicConfig, nodata: float | None
) -> None:
    src = _prediction(tmp_path / "pred.tif", _ramps("uint16", 0), 0)
    result = mosaic_scenes([src], tmp_path / "m.tif", config, nodata=nodata)
    assert not result.copied
    with rasterio.open(src) as a, rasterio.open(result.output) as m:
        assert m.tags()["P2P_MOSAIC_INPUTS"] == "1" and "P2P_SCENE" not in m.tags()
        if change == "crs":
            assert m.crs.to_epsg() == 32632 and m.shape != a.shape
        elif change == "resolution":
            assert m.res == (20.0, 20.0) and m.shape == (150, 260)
        else:
            assert m.nodata == 7 and m.transform == a.transform
            pixels, data = a.read(), m.read()
            assert (data[pixels == 0] == 7).all() and (
                data[pixels != 0] == pixels[pixels != 0]
            ).all()


@pytest.mark.parametrize(
    ("dtype", "nodata", "flaw", "expected"),
    [
        ("uint16", 0.0, 0, (0, 0)),  # nodata in one band only: the blend blanks both bands
        ("float32", math.nan, np.inf, (np.finfo(np.float32).max, None)),  # inf: clipped
        ("float32", -9999.0, np.nan, (-9999.0, -9999.0)),  # NaN under another nodata: nodata
    ],
)
def test_one_input_whose_values_the_blend_changes_is_blended(
    tmp_path: Path, dtype: str, nodata: float, flaw: float, expected: tuple[float, float | None]
) -> None:
    data = _ramps(dtype, nodata)
    data[0, 5, 0] = flaw
    src = _prediction(tmp_path / "pred.tif", data, nodata)
    result = mosaic_scenes([src], tmp_path / "m.tif", MosaicConfig())
    assert not result.copied
    first, second = expected
    with rasterio.open(result.output) as m:
        assert m.read(1)[5, 0] == first
        assert m.read(2)[5, 0] == (data[1, 5, 0] if second is None else second)
        assert "P2P_SCENE" not in m.tags()


def test_one_input_as_a_cog_is_blended_into_a_plain_geotiff(tmp_path: Path) -> None:
    with geotiff.publishing(tmp_path / "pred.tif", "cog") as work:
        _prediction(work, _ramps("uint16", 0)[:, :200], 0)  # too small for overviews
    result = mosaic_scenes([tmp_path / "pred.tif"], tmp_path / "m.tif", MosaicConfig())
    assert not result.copied  # GDAL refuses to add tags to a COG in place
    with rasterio.open(tmp_path / "pred.tif") as a, rasterio.open(result.output) as m:
        np.testing.assert_array_equal(m.read(), a.read())
        assert "LAYOUT" not in m.tags(ns="IMAGE_STRUCTURE")


def test_a_truncated_input_is_an_error_not_a_copy(tmp_path: Path) -> None:
    # block rows written bottom-up: the top row's tiles end the file, so cutting it short loses
    # them while the last tile (which opening checks) is whole
    src = _prediction(tmp_path / "pred.tif", _ramps("uint16", 0), 0, rows=(256, 0))
    with src.open("r+b") as f:
        f.truncate(src.stat().st_size - 100)
    out = tmp_path / "out" / "m.tif"
    with pytest.raises(InputError) as caught:
        mosaic_scenes([src], out, MosaicConfig())
    assert (caught.value.where, caught.value.problem[:12]) == (str(src), "is truncated")
    assert not out.parent.exists() or not list(out.parent.iterdir())


def test_a_killed_one_input_mosaic_reruns_to_the_same_bytes(tmp_path: Path) -> None:
    src = _prediction(tmp_path / "pred.tif", _ramps("float32", math.nan), math.nan)
    whole = tmp_path / "whole" / "m.tif"
    mosaic_scenes([src], whole, MosaicConfig(), output_format="cog", feather=16)
    # killed after the copy was recorded, before the COG was published: the rerun publishes
    out = tmp_path / "killed" / "m.tif"
    args = [str(src), str(out), "cog", "1"]
    killed = subprocess.run([sys.executable, "-c", KILLED_MOSAIC, *args], timeout=300)
    assert killed.returncode == -signal.SIGKILL and not out.exists()
    assert json.loads((out.parent / ".m.tif.state.json").read_text())["rows_done"] == 300
    assert mosaic_scenes([src], out, MosaicConfig(), output_format="cog", feather=16).copied
    assert out.read_bytes() == whole.read_bytes()
    # killed inside the copy: a torn partial and no state (it is removed before copying)
    torn = tmp_path / "torn" / "m.tif"
    torn.parent.mkdir()
    torn.with_name(".m.tif.partial.tif").write_bytes(src.read_bytes()[:5000])
    mosaic_scenes([src], torn, MosaicConfig(), output_format="cog", feather=16)
    assert torn.read_bytes() == whole.read_bytes()
    for folder in (out.parent, torn.parent):
        assert sorted(p.name for p in folder.iterdir()) == ["m.tif"]


FULL_DISK_MOSAIC = """
import sys
from p2p.core.config import MosaicConfig
from p2p.core.errors import OutputError
from p2p.infer.mosaic import mosaic_scenes

try:
    mosaic_scenes([sys.argv[1]], sys.argv[2], MosaicConfig())
except OutputError as exc:
    print(exc)
"""


@pytest.mark.skipif(not unshare_works(), reason="needs user+mount namespaces for a tmpfs")
def test_a_one_input_mosaic_onto_a_full_disk_fails_and_leaves_nothing(tmp_path: Path) -> None:
    src = _prediction(tmp_path / "pred.tif", _ramps("uint16", 0), 0)
    assert src.stat().st_size > 2 * 64 * 1024
    full = tmp_path / "full"  # a real 64 KiB tmpfs, mounted for the child alone
    full.mkdir()
    script = 'mount -t tmpfs -o size=64k tmpfs "$0" && "$@"; echo "left: $(ls -A "$0")"'
    child = [sys.executable, "-c", FULL_DISK_MOSAIC, str(src), str(full / "m.tif")]
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, str(full), *child],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout == (
        f"{full / 'm.tif'}: was not written completely (disk full or I/O error); free space "
        "and rerun (No space left on device)\nleft: \n"
    ), proc.stderr


def test_cli_predict_of_one_scene_delivers_its_cached_prediction(tmp_path: Path) -> None:
    model = write_tiny_bundle(tmp_path / "model")
    data = (np.arange(2 * 64 * 80).reshape(2, 64, 80) % 3000 + 1).astype(np.uint16)
    data[:, :20, :24] = 0  # source nodata: the prediction's nodata there
    scene = write_geotiff(tmp_path / "scene.tif", data, nodata=0, blocksize=16)
    out = tmp_path / "out.tif"
    run = cli(["predict", "--model", model, "--input", scene, "--output", out,
               "--tile-size", "32", "--overlap", "4", "--device", "cpu", "--json"])  # fmt: skip
    assert run.returncode == 0, run.stderr
    record = json.loads(run.stdout.strip().splitlines()[-1])
    prediction = Path(record["stages"]["predict:scene"]["path"]) / "scene.tif"
    with rasterio.open(prediction) as p, rasterio.open(out) as o:
        assert (p.read() == 0).any() and (p.read() != 0).any()
        np.testing.assert_array_equal(o.read(), p.read())
        assert o.tags()["P2P_MODEL_SHA256"] == p.tags()["P2P_MODEL_SHA256"]
        assert o.tags()["P2P_MOSAIC_INPUTS"] == "1"
        assert o.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    assert _tiles(out) == _tiles(prediction)
