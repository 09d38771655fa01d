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


def _write_partial(
    path: Path, data: np.ndarray, row_order: list[int], compress: geotiff.Compression = "deflate"
) -> Path:
    """A GeoTIFF as `predict_scene` writes it: `geotiff.create`, then block rows in any order
    (a row may come twice, as after a resume)."""
    c, h, w = data.shape
    nodata = math.nan if data.dtype.kind == "f" else 0.0
    tags = {"P2P_SCENE": "s", "P2P_SETTINGS": '{"a": 1}'}
    grid = Grid(CRS.from_epsg(32633), UTM, w, h)
    names = [f"b{i}" for i in range(c)]
    geotiff.create(path, grid, c, str(data.dtype), nodata, tags, names, compress)
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


def gdal_cog(src: Path, dst: Path) -> Path:
    """GDAL's own COG driver on `src` with p2p's settings (DEFLATE, predictor, 256 blocks,
    average overviews)."""
    from rasterio.shutil import copy

    with rasterio.open(src) as ds:
        predictor = "FLOATING_POINT" if ds.dtypes[0].startswith("float") else "YES"
    copy(src, dst, driver="COG", COMPRESS="DEFLATE", LEVEL=6, PREDICTOR=predictor,
         BLOCKSIZE=BLOCK, OVERVIEW_RESAMPLING="AVERAGE", BIGTIFF="IF_SAFER")  # fmt: skip
    return dst


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_assembled_cog_matches_gdals_cog_driver(tmp_path: Path, dtype: str) -> None:
    """Pixels, overviews (count, sizes, values), masks, nodata, tags and descriptions of the
    assembled COG are those of GDAL's COG driver on the same input."""
    data = _pixels(dtype, (3, 700, 900))
    src = _write_partial(tmp_path / "src.tif", data, list(range(0, 700, BLOCK)))
    assemble_cog(src, tmp_path / "p2p.tif", BLOCK)
    gdal_cog(src, tmp_path / "gdal.tif")
    with rasterio.open(tmp_path / "p2p.tif") as a, rasterio.open(tmp_path / "gdal.tif") as b:
        assert (a.crs, a.transform, a.shape, a.dtypes) == (b.crs, b.transform, b.shape, b.dtypes)
        assert (a.block_shapes, a.compression, a.descriptions) == (
            b.block_shapes,
            b.compression,
            b.descriptions,
        )
        np.testing.assert_array_equal(a.nodatavals, b.nodatavals)
        assert a.tags() == b.tags()
        assert a.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == b.tags(ns="IMAGE_STRUCTURE")["LAYOUT"]
        np.testing.assert_array_equal(a.read(), b.read())
        np.testing.assert_array_equal(a.dataset_mask(), b.dataset_mask())
        assert a.overviews(1) == b.overviews(1) and a.overviews(1)
        for level in range(len(a.overviews(1))):
            with (
                rasterio.open(tmp_path / "p2p.tif", overview_level=level) as oa,
                rasterio.open(tmp_path / "gdal.tif", overview_level=level) as ob,
            ):
                assert oa.shape == ob.shape
                np.testing.assert_array_equal(oa.read(), ob.read())
                np.testing.assert_array_equal(oa.dataset_mask(), ob.dataset_mask())


@pytest.mark.parametrize("compress", ["zstd", "lzw", "none"])
@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_every_codec_gives_a_valid_cog_with_the_same_pixels(
    tmp_path: Path, compress: geotiff.Compression, dtype: str
) -> None:
    data = _pixels(dtype, (2, 600, 520))
    src = _write_partial(tmp_path / "src.tif", data, [256, 0, 512], compress)
    assemble_cog(src, tmp_path / "cog.tif", BLOCK)
    valid, errors, warnings = cog_validate(str(tmp_path / "cog.tif"), strict=True, quiet=True)
    assert valid, errors + warnings
    with rasterio.open(tmp_path / "cog.tif") as cog:
        codec = "none" if cog.compression is None else cog.compression.value.lower()
        assert codec == compress
        predictor = cog.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR")
        assert predictor == (None if compress == "none" else "3" if dtype == "float32" else "2")
        np.testing.assert_array_equal(cog.read(), data)
        assert cog.overviews(1) == [2, 4]
    with rasterio.open(tmp_path / "cog.tif", OVERVIEW_LEVEL=0) as ovr:
        codec = "none" if ovr.compression is None else ovr.compression.value.lower()
        assert codec == compress  # the overviews use the tiles' codec
