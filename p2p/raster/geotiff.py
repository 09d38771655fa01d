"""Writing predicted rasters: tiled, compressed GeoTIFFs written in row bands, COG conversion.

Outputs are first written under a temporary name beside the final one (a sparse, tiled,
compressed GeoTIFF that is written block row by block row, GDAL encoding the tiles of a row on
the process's thread budget), and only renamed, or
assembled into a Cloud Optimized GeoTIFF from its tiles (`p2p.raster.cog`), when complete.
Values are rounded and clipped into the target dtype here, so every writer agrees on units and
nodata.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from p2p.core.errors import OutputError
from p2p.core.fsutil import (
    atomic_path,
    create_temp_file,
    fsync_dir,
    fsync_file,
)
from p2p.raster import Grid
from p2p.raster.cog import assemble_cog

log = logging.getLogger(__name__)

#: Internal tile side of every GeoTIFF p2p writes (and the row unit of resumable writes).
BLOCK = 256
OutputFormat = Literal["gtiff", "cog"]
#: Output codecs (`PredictConfig.compress`).
Compression = Literal["deflate", "zstd", "lzw", "none"]
COMPRESSIONS: tuple[Compression, ...] = ("deflate", "zstd", "lzw", "none")
INCOMPLETE = "was not written completely (disk full or I/O error); free space and rerun"
#: Floor of the GDAL block cache while streaming (bytes).
MIN_CACHE = 16 << 20


def streaming_cache(width: int, rows: int, pixel_bytes: int) -> rasterio.Env:
    """GDAL settings for streaming rasters through in bands: a block cache of `rows` x `width`.

    GDAL's default cache (5% of RAM) keeps the decoded blocks of everything read or written
    until it is full, so a streaming run's peak memory grows with the scene; the pixels that one
    piece of work touches (plus block alignment) are all it needs.

    Args:
        width: Columns one piece of work reads or writes at once, in pixels.
        rows: Rows one band of work reads or writes at once, block alignment included.
        pixel_bytes: Bytes per pixel over every raster read and written together.
    """
    return block_cache(rows * width * pixel_bytes)


def block_cache(nbytes: int) -> rasterio.Env:
    """GDAL settings with a block cache of `nbytes` (at least `MIN_CACHE`)."""
    return rasterio.Env(GDAL_CACHEMAX=max(MIN_CACHE, nbytes))


def default_nodata(dtype: str) -> float:
    """Nodata for a dtype when none is given: 0 for unsigned integers, the minimum for signed
    integers, NaN for floats."""
    dt = np.dtype(dtype)
    if np.issubdtype(dt, np.unsignedinteger):
        return 0
    if np.issubdtype(dt, np.integer):
        return float(np.iinfo(dt).min)
    return math.nan


def to_dtype(values: np.ndarray, valid: np.ndarray, dtype: str, nodata: float) -> np.ndarray:
    """Cast float values into a raster dtype, with nodata where invalid.

    Integers are rounded to nearest and clipped to the dtype's range. A valid pixel whose value
    equals `nodata` is moved one step toward the range's inside, so nodata keeps meaning "no
    data" only.

    Args:
        values: `(C, h, w)` float in target units.
        valid: `(h, w)` bool.
        dtype: Output dtype name.
        nodata: Output nodata value (NaN allowed for floats).

    Returns:
        `(C, h, w)` array of `dtype`.
    """
    dt = np.dtype(dtype)
    out: np.ndarray
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        out = np.clip(np.rint(values), info.min, info.max).astype(dt)
        step = 1 if nodata < info.max else -1
        clash = valid[None] & (out == nodata)
        out[clash] = nodata + step
    else:
        finfo = np.finfo(dt)
        out = np.clip(values, finfo.min, finfo.max).astype(dt)
        if not math.isnan(nodata):
            clash = valid[None] & (out == nodata)
            out[clash] = np.nextafter(dt.type(nodata), dt.type(0))
    out[:, ~valid] = nodata
    return out


def codec_options(compress: Compression, dtype: str) -> dict[str, Any]:
    """GDAL creation options of `compress` for `dtype`: the codec, its level, and the
    predictor that pays (horizontal differencing for integers, floating-point for floats;
    none without compression). The levels are GDAL's defaults, the ones it encodes with when
    `write_rows` reopens a file in update mode (where no level option reaches the encoder)."""
    if compress == "none":
        return {"compress": "none"}
    predictor = 3 if np.issubdtype(np.dtype(dtype), np.floating) else 2
    levels = {"deflate": {"zlevel": 6}, "zstd": {"zstd_level": 9}, "lzw": {}}
    return {"compress": compress, "predictor": predictor, **levels[compress]}


def profile(
    grid: Grid,
    count: int,
    dtype: str,
    nodata: float,
    compress: Compression = "deflate",
    threads: int | None = None,
) -> dict[str, Any]:
    """Creation options of a tiled, compressed GeoTIFF on `grid`.

    Args:
        grid: The raster's grid.
        count: Bands.
        dtype: Sample type.
        nodata: Nodata value.
        compress: Codec (`codec_options`).
        threads: GDAL's encoder threads; None: ``GDAL_NUM_THREADS`` (the process's thread
            budget, `p2p.core.threads`), else all CPUs. Writes reopened in update mode
            (`write_rows`) read ``GDAL_NUM_THREADS`` too.
    """
    return {
        "driver": "GTiff",
        "crs": grid.crs,
        "transform": grid.transform,
        "width": grid.width,
        "height": grid.height,
        "count": count,
        "dtype": dtype,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": BLOCK,
        "blockysize": BLOCK,
        **codec_options(compress, dtype),
        "num_threads": str(threads or os.environ.get("GDAL_NUM_THREADS", "ALL_CPUS")),
        "interleave": "pixel",
        "bigtiff": "if_safer",
        "sparse_ok": True,
    }


def create(
    path: Path,
    grid: Grid,
    count: int,
    dtype: str,
    nodata: float,
    tags: dict[str, str],
    descriptions: list[str] | None = None,
    compress: Compression = "deflate",
) -> None:
    """Create an empty (sparse) tiled GeoTIFF carrying `tags` and band descriptions, its
    blocks encoded with `compress`."""
    with rasterio.open(path, "w", **profile(grid, count, dtype, nodata, compress)) as dst:
        dst.update_tags(**tags)
        for i, name in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, name)


def write_rows(path: Path, data: np.ndarray, row_off: int) -> None:
    """Write full-width rows into an existing GeoTIFF and flush them to disk.

    Opening per call keeps the on-disk file complete after each call, which is what lets a
    killed run resume from the rows it recorded.

    Args:
        path: File made by `create`.
        data: `(C, h, width)` in the file's dtype.
        row_off: First row.
    """
    with _writing(path), rasterio.open(path, "r+") as dst:
        dst.write(data, window=Window(0, row_off, data.shape[2], data.shape[1]))
    _flush(path, path)
    check_written(path, row_off, row_off + data.shape[1])


def copy_tagged(src: Path, dst: Path, tags: dict[str, str], name: Path) -> None:
    """Copy the GeoTIFF `src` to `dst` byte for byte, add `tags`, flush it and check it whole.

    Adding tags makes GDAL rewrite only the file's directory (at the end of the file when it
    grows); the tiles keep their bytes, and `src`'s own tags and band descriptions stay.

    Args:
        src: A complete GeoTIFF.
        dst: Where the copy goes (overwritten).
        tags: Tags to add (or replace).
        name: The file to name in errors (the final output rather than `dst`).

    Raises:
        OutputError: the copy, the tag update or the flush failed, or a tile of the copy ends
            past its end.
    """
    try:
        shutil.copyfile(src, dst)
    except OSError as exc:
        raise OutputError(name, f"{INCOMPLETE} ({exc.strerror})") from None
    with _writing(name), rasterio.open(dst, "r+") as ds:
        ds.update_tags(**tags)
    _flush(dst, name)
    check_written(dst, name=name)


def _flush(path: Path, name: Path) -> None:
    """`fsync_file`, its failure an `OutputError` naming `name`."""
    try:
        fsync_file(path)
    except OSError as exc:
        raise OutputError(name, f"{INCOMPLETE} (fsync: {exc.strerror})") from None


def check_written(
    path: Path, row0: int = 0, row1: int | None = None, name: Path | None = None
) -> None:
    """Raise unless the tiles of rows `[row0, row1)` lie wholly inside the file on disk.

    GDAL reports a full disk on `write` only while the data fits its block cache; when the
    cache is flushed on close the error is printed and swallowed, leaving a file that opens
    (or not) with tiles missing. Checking the tile offsets against the file size costs a few
    metadata look-ups per block row and catches that before the rows are recorded as done.

    Args:
        path: The GeoTIFF just written.
        row0: First row to check.
        row1: End of the rows to check (all rows when None).
        name: The file to name in the error (the final output rather than its temporary).

    Raises:
        OutputError: the file does not open or a tile ends past its end.
    """
    try:
        size = path.stat().st_size
        with rasterio.open(path) as ds:
            rows, cols = ds.block_shapes[0]
            last = ds.height if row1 is None else min(row1, ds.height)
            for by in range(row0 // rows, math.ceil(last / rows)):
                for bx in range(math.ceil(ds.width / cols)):
                    offset = ds.get_tag_item(f"BLOCK_OFFSET_{bx}_{by}", "TIFF", bidx=1)
                    length = ds.get_tag_item(f"BLOCK_SIZE_{bx}_{by}", "TIFF", bidx=1)
                    if offset and length and int(offset) + int(length) > size:
                        raise OutputError(name or path, INCOMPLETE)
    except (OSError, RasterioIOError):
        raise OutputError(name or path, INCOMPLETE) from None


@contextlib.contextmanager
def _writing(name: Path) -> Iterator[None]:
    """Turn GDAL's write failures (a full disk, mostly) into a one-line `OutputError`."""
    try:
        yield
    except RasterioIOError as exc:
        detail = str(exc).splitlines()[0] if str(exc) else "write failed"
        raise OutputError(name, f"{INCOMPLETE} ({detail})") from None


def finish(partial: Path, final: Path, output_format: OutputFormat) -> None:
    """Publish a complete partial file under its final name (as a COG when asked)."""
    if output_format == "cog":
        with atomic_path(final, suffix=".tif") as tmp, _writing(final):
            assemble_cog(partial, tmp, BLOCK)
            check_written(tmp, name=final)
        partial.unlink()
    else:
        check_written(partial, name=final)
        os.replace(partial, final)
        fsync_dir(final.parent)


@contextlib.contextmanager
def publishing(final: str | Path, output_format: OutputFormat) -> Iterator[Path]:
    """Yield a temporary GeoTIFF path beside `final` to write; when the block succeeds, publish
    it as `final` (converted to a COG when asked). On failure nothing is left behind."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = create_temp_file(final.parent, f".{final.name}.", ".work.tif")
    try:
        with _writing(final):
            yield work
        finish(work, final, output_format)
    finally:
        work.unlink(missing_ok=True)
