"""COGs assembled from the streaming writer's tiles (`p2p.raster.cog`), checked with GDAL."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rio_cogeo.cogeo import cog_validate

from p2p.raster import Grid, geotiff
from p2p.raster.cog import assemble_cog, overview_factors
from tests.faultkit import UTM
from tests.rasters import write_geotiff

BLOCK = geotiff.BLOCK


def _pixels(dtype: str, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Noisy ramps with a nodata hole (0 or NaN) in every band."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    y, x = np.mgrid[0:h, 0:w]
    data = np.stack([1000 + 100 * b + y + 2 * x + rng.normal(0, 5, (h, w)) for b in range(c)])
    data = data.astype(dtype)
    data[:, 100:180, 200:330] = np.nan if dtype.startswith("float") else 0
    return data


def _write_partial(path: Path, data: np.ndarray, row_order: list[int]) -> Path:
    """A GeoTIFF as `predict_scene` writes it: `geotiff.create`, then block rows in any order
    (a row may come twice, as after a resume)."""
    c, h, w = data.shape
    nodata = math.nan if data.dtype.kind == "f" else 0.0
    tags = {"P2P_SCENE": "s", "P2P_SETTINGS": '{"a": 1}'}
    grid = Grid(CRS.from_epsg(32633), UTM, w, h)
    geotiff.create(path, grid, c, str(data.dtype), nodata, tags, [f"b{i}" for i in range(c)])
    for row in row_order:
        geotiff.write_rows(path, data[:, row : row + BLOCK], row)
    return path


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_assembled_cog_is_valid_and_keeps_pixels_tags_and_grid(tmp_path: Path, dtype: str) -> None:
    data = _pixels(dtype, (3, 600, 700))
    src = _write_partial(tmp_path / "src.tif", data, list(range(0, 600, BLOCK)))
    assemble_cog(src, tmp_path / "cog.tif", BLOCK)
    valid, errors, warnings = cog_validate(str(tmp_path / "cog.tif"), strict=True, quiet=True)
    assert valid, errors + warnings
    with rasterio.open(src) as a, rasterio.open(tmp_path / "cog.tif") as b:
        assert b.profile | {"interleave": "pixel", "nodata": 0} == a.profile | {"nodata": 0}
        np.testing.assert_array_equal(b.nodatavals, a.nodatavals)  # NaN equals NaN here
        assert b.tags() == a.tags() and b.descriptions == a.descriptions
        assert b.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        np.testing.assert_array_equal(b.read(), data)
        assert b.overviews(1) == [2, 4] == overview_factors(700, 600, BLOCK)
        half = b.read(out_shape=(3, 300, 350)).astype(np.float64)
    # GDAL's average overview ignores nodata: compare where a 2x2 cell is wholly valid
    cells = data.astype(np.float64).reshape(3, 300, 2, 350, 2)
    mean = cells.mean(axis=(2, 4))
    ok = np.isfinite(mean) & (cells != 0).all(axis=(2, 4))
    assert np.abs(half[ok] - mean[ok]).max() <= (1 if dtype == "uint16" else 1e-3)
    assert src.is_file() and not list(tmp_path.glob("*.ovr"))


def test_cog_bytes_do_not_depend_on_where_the_writer_put_the_tiles(tmp_path: Path) -> None:
    """A resumed run rewrites block rows a killed run wrote: the file layout differs, the COG
    must not."""
    data = _pixels("uint16", (1, 900, 600))
    one = _write_partial(tmp_path / "one.tif", data, [0, 256, 512, 768])
    two = _write_partial(tmp_path / "two.tif", data, [768, 0, 256, 256, 512, 0])
    assert one.read_bytes() != two.read_bytes()
    digests = []
    for src in (one, two):
        out = src.with_suffix(".cog.tif")
        assemble_cog(src, out, BLOCK)
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_small_and_bigtiff_sources(tmp_path: Path) -> None:
    """No overviews under one block; a BigTIFF source becomes a classic TIFF; sparse (never
    written) tiles stay empty and read as nodata."""
    small = _pixels("uint16", (2, 200, 150))
    src = write_geotiff(
        tmp_path / "small.tif", small, blocksize=BLOCK, nodata=0, compress="deflate"
    )
    assemble_cog(src, tmp_path / "small.cog.tif", BLOCK)
    assert cog_validate(str(tmp_path / "small.cog.tif"), quiet=True)[0]
    with rasterio.open(tmp_path / "small.cog.tif") as ds:
        assert ds.overviews(1) == []
        np.testing.assert_array_equal(ds.read(), small)
    big = _pixels("uint16", (1, 600, 600))
    big[:, 256:512] = 0
    src = write_geotiff(
        tmp_path / "big.tif", big, blocksize=BLOCK, nodata=0, compress="deflate", bigtiff="yes",
        sparse_ok=True,
    )  # fmt: skip
    assert src.read_bytes()[2] == 43
    assemble_cog(src, tmp_path / "big.cog.tif", BLOCK)
    assert (tmp_path / "big.cog.tif").read_bytes()[2] == 42
    assert cog_validate(str(tmp_path / "big.cog.tif"), strict=True, quiet=True)[0]
    with rasterio.open(tmp_path / "big.cog.tif") as ds:
        np.testing.assert_array_equal(ds.read(), big)
        assert ds.get_tag_item("BLOCK_OFFSET_0_1", "TIFF", bidx=1) is None


def test_bigtiff_layout(tmp_path: Path) -> None:
    """The layout used past 4 GiB (64-bit offsets), forced on a small raster."""
    data = _pixels("uint16", (2, 700, 600))
    src = _write_partial(tmp_path / "src.tif", data, [0, 256, 512])
    assemble_cog(src, tmp_path / "big.cog.tif", BLOCK, bigtiff=True)
    assert (tmp_path / "big.cog.tif").read_bytes()[2] == 43
    valid, errors, warnings = cog_validate(str(tmp_path / "big.cog.tif"), strict=True, quiet=True)
    assert valid, errors + warnings
    with rasterio.open(tmp_path / "big.cog.tif") as ds:
        np.testing.assert_array_equal(ds.read(), data)
        assert ds.overviews(1) == [2, 4] and ds.tags()["P2P_SCENE"] == "s"
