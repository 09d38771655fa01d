"""Many predicted scenes → one raster on one grid, blended without seams where they overlap.

The output grid is the union of the inputs' extents in the first input's CRS (or
`MosaicConfig.crs`), at its pixel size (or `MosaicConfig.resolution`), anchored to the first
input's pixel grid when the CRS and pixel size are the same (so that input is not resampled).

The mosaic is built window by window. Each input is warped lazily onto the output grid
(`open_aligned`, a `WarpedVRT`), read over the window plus a halo of `feather` pixels, and
weighted by its Euclidean distance to the nearest invalid pixel (its footprint's edge or a
nodata hole), capped at `feather`. The distance is exact within the cap because the halo holds
every pixel that close. Where inputs overlap, values are averaged with these weights, so each
scene fades out over `feather` pixels towards its edge and no seam appears; where one input is
valid, its value is copied unchanged (and only where scenes overlap are weights found). Memory
is bounded by one window plus its halo per input that meets it, and one block row of the
output (blended into, and held by the writer); inputs are read only where they lie and opened
only while the strips need them (`p2p.infer.mosaic_blend`: one window's blend). A single input
that this would give back unchanged is copied as a file instead
(`p2p.infer.mosaic_copy.copyable`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.warp import calculate_default_transform, transform_bounds

from p2p.core.cache import fingerprint_file, stage_key
from p2p.core.config import MosaicConfig
from p2p.core.errors import ConfigError, InputError
from p2p.infer.mosaic_blend import Inputs, blend_window
from p2p.infer.mosaic_copy import copyable
from p2p.raster import Grid, SceneReader, geotiff
from p2p.raster.partial import RowSink

log = logging.getLogger(__name__)

#: Side of the output windows the mosaic is built in (a multiple of the GeoTIFF block side).
WINDOW = 2 * geotiff.BLOCK
#: Version of the partial-mosaic state format (part of a resumable mosaic's job key). 2: the
#: partial of a one-input mosaic may be a tagged copy of its input (the job's ``copy`` says so).
#: 3: inputs are read over their footprints only (a reprojected input's values may differ
#: within GDAL's approximate warp from rows an older run left), so those rows are not resumed.
MOSAIC_FORMAT = 3


@dataclass(frozen=True)
class MosaicResult:
    """What `mosaic_scenes` wrote.

    Attributes:
        output: The mosaic raster.
        crs: Output CRS as text.
        width: Columns.
        height: Rows.
        bands: Bands.
        dtype: Dtype (the inputs').
        nodata: Nodata value (NaN for float outputs without one).
        inputs: Number of input rasters.
        seconds: Wall time.
        copied: True when the one input was copied rather than blended
            (`p2p.infer.mosaic_copy.copyable`).
    """

    output: str
    crs: str
    width: int
    height: int
    bands: int
    dtype: str
    nodata: float
    inputs: int
    seconds: float
    copied: bool = False


def _crs(config: MosaicConfig, first: Grid) -> CRS:
    if config.crs is None:
        return first.crs
    try:
        return CRS.from_user_input(config.crs)
    except CRSError:
        raise ConfigError("mosaic.crs", f"unknown CRS {config.crs!r}") from None


def check_crs(named: Sequence[tuple[str, CRS | None]], config: MosaicConfig) -> None:
    """Inputs `(name, CRS)` can share a mosaic: a CRS on each, or one input alone without a
    CRS (kept on its own grid) and no ``mosaic.crs`` to reproject it to.

    Raises:
        InputError: Naming the first input without a CRS, and why it needs one.
    """
    bare = [name for name, crs in named if crs is None]
    if not bare:
        return
    fix = "set one with `gdal_edit.py -a_srs EPSG:<code> FILE` (or `rio edit-info --crs`)"
    if config.crs is not None:
        why = f"it cannot be reprojected to mosaic.crs {config.crs}"
    elif len(named) > 1:
        why = f"it cannot be placed beside the other {len(named) - 1} input(s) of the mosaic"
    else:
        return
    raise InputError(bare[0], f"has no CRS, so {why}; {fix}")


def _box(grid: Grid, crs: CRS | None) -> tuple[float, float, float, float]:
    """`grid`'s bounds in `crs` (as they are without a CRS: one input alone, `check_crs`)."""
    if grid.crs is None or crs is None:
        return tuple(grid.bounds)  # type: ignore[return-value]
    box: tuple[float, float, float, float] = transform_bounds(
        grid.crs, crs, *grid.bounds, densify_pts=21
    )
    return box


def mosaic_grid(grids: Sequence[Grid], config: MosaicConfig, names: Sequence[str] = ()) -> Grid:
    """The output grid: union of the grids' extents (see the module docstring).

    Raises:
        InputError: A grid without a CRS beside others, or with ``mosaic.crs`` set
            (`check_crs`; `names` name the grids, default their numbers).
        ConfigError: ``mosaic.crs`` is not a CRS.
    """
    names = names or [f"input {i + 1}" for i in range(len(grids))]
    check_crs([(name, g.crs) for name, g in zip(names, grids, strict=True)], config)
    first = grids[0]
    crs = _crs(config, first)
    if config.resolution is not None:
        rx = ry = float(config.resolution)
    elif crs == first.crs:
        rx, ry = first.res
    else:
        t, _, _ = calculate_default_transform(
            first.crs, crs, first.width, first.height, *first.bounds
        )
        rx = ry = min(abs(t.a), abs(t.e))
    boxes = [_box(g, crs) for g in grids]
    left, bottom = min(b[0] for b in boxes), min(b[1] for b in boxes)
    right, top = max(b[2] for b in boxes), max(b[3] for b in boxes)
    if crs == first.crs and (rx, ry) == first.res:
        x0, y0 = first.bounds.left, first.bounds.top
    else:
        x0, y0 = 0.0, 0.0
    left = x0 + math.floor((left - x0) / rx + 1e-9) * rx
    top = y0 + math.ceil((top - y0) / ry - 1e-9) * ry
    width = math.ceil((right - left) / rx - 1e-9)
    height = math.ceil((top - bottom) / ry - 1e-9)
    return Grid(crs, Affine(rx, 0.0, left, 0.0, -ry, top), width, height)


def mosaic_scenes(
    inputs: Sequence[str | Path],
    output: str | Path,
    config: MosaicConfig,
    nodata: float | None = None,
    output_format: geotiff.OutputFormat = "gtiff",
    feather: int = 64,
    resampling: str = "bilinear",
    progress: Callable[[int, int], None] | None = None,
    compress: geotiff.Compression = "deflate",
    extra_tags: Mapping[str, str] | None = None,
) -> MosaicResult:
    """Mosaic predicted rasters onto one grid, feathering their overlaps.

    One input whose blend onto the mosaic grid would give back its very pixels (see
    `p2p.infer.mosaic_copy.copyable`: the grid, nodata and tiling unchanged, as for `p2p
    predict` of one scene) is copied byte for byte instead, with the mosaic's tags added; its
    own tags (a prediction's model hash, settings and scene) and band descriptions stay in the
    output.

    Args:
        inputs: Rasters with the same band count and dtype (e.g. `predict_scene` outputs).
        output: The mosaic to write.
        config: Output CRS and resolution (default: the first input's).
        nodata: Output nodata; default the first input's, else 0 / dtype minimum / NaN.
        output_format: ``gtiff`` or ``cog``.
        feather: Width in output pixels over which a scene fades out towards its edge.
        resampling: How inputs are warped onto the output grid.
        progress: Called with (windows done, windows total).
        compress: Codec of the output (`p2p.raster.geotiff.codec_options`).
        extra_tags: Tags the mosaic carries besides its own (e.g. what layer it is).

    Raises:
        InputError: no inputs, an unreadable or truncated input, or inputs that differ in
            bands or dtype.
        ConfigError: an unknown output CRS.
    """
    start = time.perf_counter()
    if not inputs:
        raise InputError(output, "no rasters to mosaic")
    if feather < 1:
        raise ConfigError("feather", f"must be at least 1 pixel, got {feather}")
    bands, dtype, grid, out_nodata, grids = _plan(inputs, config, nodata)
    copy = len(inputs) == 1 and copyable(inputs[0], grid, out_nodata, compress)
    job = stage_key(
        "mosaic-scenes",
        MOSAIC_FORMAT,
        {"mosaic": config.model_dump(mode="json"), "nodata": out_nodata, "feather": feather,
         "resampling": resampling, "format": output_format, "copy": copy}
        | ({"compress": compress} if compress != "deflate" else {})
        | ({"tags": dict(extra_tags)} if extra_tags else {}),
        [fingerprint_file(p) for p in inputs],
    )  # fmt: skip
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    tags = {"P2P_MOSAIC_INPUTS": str(len(inputs)), "P2P_FEATHER": str(feather)}
    tags |= dict(extra_tags or {})
    readers = Inputs(inputs, grids, grid, resampling)
    # copying and publishing (the blend sets its own, `_cache_bytes`): the blocks of a window
    # and its halo of each input one meets, and the output's
    pixel_bytes = bands * np.dtype(dtype).itemsize * (readers.depth(WINDOW, feather) + 1)
    columns = min(grid.width, WINDOW + 2 * geotiff.BLOCK)
    with geotiff.streaming_cache(columns, WINDOW + 2 * geotiff.BLOCK, pixel_bytes):
        sink = RowSink(Path(output), job, grid.height)
        if copy:
            src = Path(inputs[0])
            sink.write_whole(lambda partial: geotiff.copy_tagged(src, partial, tags, sink.output))
            if progress:
                progress(1, 1)
        else:
            _blend(sink, readers, (bands, dtype, out_nodata, compress), tags, feather, progress)
        sink.publish(output_format)
    return MosaicResult(
        output=str(output),
        crs=grid.crs.to_string() if grid.crs else "",
        width=grid.width,
        height=grid.height,
        bands=bands,
        dtype=dtype,
        nodata=out_nodata,
        inputs=len(inputs),
        seconds=round(time.perf_counter() - start, 3),
        copied=copy,
    )


def _cache_bytes(inputs: Inputs, pixel_bytes: int, feather: int) -> int:
    """GDAL's block cache for the blend: the blocks one window (a block row by `WINDOW`
    columns) and its halo meet — up to 3 block rows by `WINDOW` + 2 blocks, of each input
    that meets it (the next window of the block row reads their last column again) and of the
    output. Not `geotiff.MIN_CACHE`'s floor: a cache that outgrows these blocks fills with the
    block rows the mosaic's width spans, so the peak memory would grow with the mosaic.

    Args:
        pixel_bytes: Bytes of one pixel of one input (bands x itemsize).
    """
    columns = min(inputs.grid.width, WINDOW + 2 * geotiff.BLOCK)
    depth = inputs.depth(WINDOW, feather) + 1
    nbytes = 3 * geotiff.BLOCK * columns * pixel_bytes * depth
    return max(1 << 20, nbytes)  # GDAL reads a number under 100000 as megabytes


def _plan(
    inputs: Sequence[str | Path], config: MosaicConfig, nodata: float | None
) -> tuple[int, str, Grid, float, list[Grid]]:
    """Band count, dtype, grid and nodata of the mosaic, and the inputs' own grids; the inputs
    are opened one at a time (there may be more than the files a process may hold open).

    Raises:
        InputError: an input's bands or dtype differ from the first input's.
    """
    grids: list[Grid] = []
    for path in inputs:
        with SceneReader(path) as r:
            if not grids:
                first, bands, dtype, out_nodata = r.paths[0], r.count, r.dtype, r.nodata
            elif (r.count, r.dtype) != (bands, dtype):
                raise InputError(
                    r.paths[0],
                    f"has {r.count} band(s) of {r.dtype} but {first} has "
                    f"{bands} of {dtype}; mosaic inputs must match",
                )
            grids.append(r.grid)
    grid = mosaic_grid(grids, config, [str(p) for p in inputs])
    out_nodata = nodata if nodata is not None else out_nodata
    out_nodata = geotiff.default_nodata(dtype) if out_nodata is None else out_nodata
    return bands, dtype, grid, float(out_nodata), grids


def _blend(
    sink: RowSink,
    inputs: Inputs,
    out: tuple[int, str, float, geotiff.Compression],
    tags: dict[str, str],
    feather: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Blend the inputs, warped onto their grid, into `sink` (created with `tags` unless
    resumed; `out` is its bands, dtype, nodata and codec)."""
    try:
        if not sink.resumed:
            geotiff.create(sink.partial, inputs.grid, out[0], out[1], out[2], tags, compress=out[3])
        cache = _cache_bytes(inputs, out[0] * np.dtype(out[1]).itemsize, feather)
        with rasterio.Env(GDAL_CACHEMAX=cache):
            _write(sink, inputs, out[:3], feather, progress)
    finally:
        inputs.close()


def _write(
    sink: RowSink,
    inputs: Inputs,
    out: tuple[int, str, float],
    feather: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Blend the mosaic strip by strip (WINDOW rows, full width) into `sink`, from the strip
    holding its first unwritten row: a killed run resumes there, bit-identical.

    A strip is blended one block row at a time (windows `BLOCK` rows by `WINDOW` columns) into
    one block row's buffer, so the rows held grow with the mosaic's width by one block row
    besides the sink's; the values do not depend on the windows (`blend_window`)."""
    bands, dtype, nodata = out
    grid = inputs.grid
    per_row = math.ceil(grid.width / WINDOW)
    total = per_row * math.ceil(grid.height / WINDOW)
    rows = np.empty((bands, geotiff.BLOCK, grid.width), dtype=dtype)
    for row in range(sink.rows_done // WINDOW * WINDOW, grid.height, geotiff.BLOCK):
        h = min(geotiff.BLOCK, grid.height - row)
        rows[:, :h] = nodata
        for col in range(0, grid.width, WINDOW):
            end = min(grid.width, col + WINDOW)
            blend_window(inputs, (row, col, row + h, end), feather, rows[:, :h, col:end], nodata)
        sink.add(row, rows[:, :h])
        inputs.release(row + h - feather)  # the next block row's halo starts there
        if (row + h) % WINDOW and row + h < grid.height:
            continue
        if row + h < grid.height:  # the last rows are not recorded: publishing follows
            sink.commit()
        if progress:
            progress(min(total, math.ceil((row + h) / WINDOW) * per_row), total)
