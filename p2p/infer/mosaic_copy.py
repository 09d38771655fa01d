"""When the mosaic of one input is its input: the test that lets `p2p.infer.mosaic` copy the
file (and add its tags) instead of blending it onto its own grid.

A one-scene `p2p predict` ends with such a mosaic; blending it would decode, recompute and
re-encode every tile only to give back the same values.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.enums import ColorInterp, Interleaving, MaskFlags
from rasterio.windows import Window

from p2p.core import storage
from p2p.core.errors import InputError, OutputError
from p2p.raster import Grid, SceneReader, geotiff, open_raster

#: Columns of a block row the pixel scan reads at once (whole blocks).
SCAN_COLUMNS = 8 * geotiff.BLOCK


def copyable(
    path: str | Path, grid: Grid, nodata: float, compress: geotiff.Compression = "deflate"
) -> bool:
    """Whether the mosaic of this one input may be a copy of its file.

    It may when blending it onto `grid` would give back its very pixels — the grid is its own
    (CRS, transform, shape; so no warp), `nodata` is its own (NaN equal to NaN), no mask or
    alpha band adds to nodata, and `_blend_keeps` its values — and its file is laid out as the
    blend would write it: a local, plain (not cloud optimized) GeoTIFF tiled in `geotiff.BLOCK`
    squares, encoded with `compress`, pixel interleaved, without overviews. (The blend would
    then copy each value unchanged: its share is exactly 1.0 where valid, see
    `p2p.infer.mosaic_blend.blend_window`.)

    Raises:
        InputError: a tile of the file ends past its end (a truncated input).
    """
    if storage.is_remote(path):
        return False
    with open_raster(path) as ds:
        same = (
            Grid.of(ds) == grid
            and ds.driver == "GTiff"
            and ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG"  # GDAL won't add tags
            and ds.nodata is not None
            and (ds.nodata == nodata or (math.isnan(ds.nodata) and math.isnan(nodata)))
            and ds.block_shapes[0] == (geotiff.BLOCK, geotiff.BLOCK)
            and _codec(ds) == compress
            and (ds.count == 1 or ds.interleaving == Interleaving.pixel)
            and not ds.overviews(1)
            and ColorInterp.alpha not in ds.colorinterp
            and all(flags == [MaskFlags.nodata] for flags in ds.mask_flag_enums)
        )
        if not same:
            return False
        try:
            geotiff.check_written(Path(path))
        except OutputError:
            raise InputError(path, "is truncated (a tile ends past the end of the file)") from None
    return _blend_keeps(path, nodata)


def _codec(ds: Any) -> str:
    """The codec of an open GeoTIFF by its `PredictConfig.compress` name."""
    return "none" if ds.compression is None else str(ds.compression.value).lower()


def _blend_keeps(path: str | Path, nodata: float) -> bool:
    """Whether the blend would keep every value of this input on its own grid: where it is
    invalid (`SceneReader`: nodata or NaN in any band) every band holds `nodata`, and (floats)
    no valid value is ±inf, which the blend would clip. Only several bands or floats need this
    look at the pixels, `SCAN_COLUMNS` of a block row at a time (memory flat in the width).
    (The blend's float64 math would round integers past 2**53; a copy keeps them.)
    """
    with SceneReader(path) as reader:
        floats = np.issubdtype(np.dtype(reader.dtype), np.floating)
        if reader.count == 1 and not floats:
            return True
        width, height = reader.grid.width, reader.grid.height
        pixel_bytes = reader.count * np.dtype(reader.dtype).itemsize
        with geotiff.streaming_cache(min(width, SCAN_COLUMNS), geotiff.BLOCK, pixel_bytes):
            for row in range(0, height, geotiff.BLOCK):
                for col in range(0, width, SCAN_COLUMNS):
                    window = Window(
                        col, row, min(SCAN_COLUMNS, width - col), min(geotiff.BLOCK, height - row)
                    )
                    data, valid = reader.read(window)
                    blank = np.isnan(data) if math.isnan(nodata) else data == nodata
                    if not blank[:, ~valid].all():
                        return False
                    if floats and not np.isfinite(data[:, valid]).all():
                        return False
    return True
