"""Helpers that write small real GeoTIFFs with rasterio for tests (importable by any test)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS


def write_geotiff(
    path: str | Path,
    array: np.ndarray,
    crs: str | CRS | None = "EPSG:32633",
    transform: Affine | None = None,
    nodata: float | None = None,
    dtype: str | None = None,
    blocksize: int | None = 64,
    descriptions: list[str] | None = None,
    **profile: Any,
) -> Path:
    """Write `array` (C, H, W) (or (H, W)) as a GeoTIFF and return its path.

    Args:
        path: Output file.
        array: Pixel values, bands first.
        crs: Coordinate reference system (None: none).
        transform: Pixel-to-map transform; defaults to 10 m pixels at (500000, 1000000).
        nodata: Nodata value stored in the file (None leaves it unset).
        dtype: Output dtype; the array's dtype by default.
        blocksize: Internal tile side (a multiple of 16), or None for a striped file.
        descriptions: Per-band descriptions.
        **profile: Extra creation options (e.g. ``compress="deflate"``).
    """
    data = np.asarray(array)
    if data.ndim == 2:
        data = data[None]
    count, height, width = data.shape
    meta: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": dtype or str(data.dtype),
        "crs": None if crs is None else CRS.from_user_input(crs),
        "transform": transform or Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 1000000.0),
        "nodata": nodata,
    }
    if blocksize is not None:
        meta.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
    meta.update(profile)
    path = Path(path)
    with rasterio.open(path, "w", **meta) as dst:
        dst.write(data.astype(meta["dtype"]))
        for i, text in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, text)
    return path


def ramp(
    count: int, height: int, width: int, dtype: str = "uint16", scale: float = 1.0
) -> np.ndarray:
    """A deterministic (count, height, width) test pattern: band b at (y, x) = b*1000 + y + 2x."""
    b, y, x = np.meshgrid(np.arange(count), np.arange(height), np.arange(width), indexing="ij")
    return ((b * 1000 + y + 2 * x) * scale).astype(dtype)


#: Tags that carry no pixel meaning and may differ between two writes of the same raster.
#: None today: p2p writes no path, host, time or thread count into a raster's tags.
FREE_TAGS: frozenset[str] = frozenset()


def assert_same_raster(a: str | Path, b: str | Path) -> None:
    """Two rasters hold the same pixels, grid, nodata, band descriptions and tags.

    The promise is "same model, scene and settings → same pixels", not the same file bytes:
    where in the file GDAL puts a block and how its compressor packs it are GDAL's business
    (block cache pressure decides when a dirty block is flushed). So bytes are not compared;
    a difference is reported as pixel counts, which says more than a byte index.
    """
    with rasterio.open(a) as x, rasterio.open(b) as y:
        assert (x.crs, x.transform, x.shape, x.dtypes) == (y.crs, y.transform, y.shape, y.dtypes)
        assert (x.nodatavals, x.descriptions) == (y.nodatavals, y.descriptions)
        tags = [{k: v for k, v in d.tags().items() if k not in FREE_TAGS} for d in (x, y)]
        assert tags[0] == tags[1]
        va, vb = x.read(masked=True), y.read(masked=True)
    differ = np.asarray((va.data != vb.data) | (va.mask != vb.mask))
    if differ.any():
        worst = np.abs(va.data.astype(np.float64) - vb.data.astype(np.float64)).max()
        raise AssertionError(
            f"{int(differ.sum())} of {differ.size} values differ (max |diff| {worst}): {a}, {b}"
        )
