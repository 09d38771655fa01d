"""Bring a target raster onto a source grid, window by window.

`open_aligned` returns a `SceneReader` whose windows refer to the given grid. When the files
already lie on that grid, or on its pixel lattice (same CRS and pixel size, origins whole pixels
apart), nothing is resampled: windows are read from the files, shifted; otherwise each file is
wrapped in a `rasterio.vrt.WarpedVRT`, so only the pixels a window needs are warped (unlike
``rio.reproject_match``, which loads whole arrays). Only the intersection carries data: pixels
of the grid outside the target come back invalid.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rasterio.warp import transform_bounds

from p2p.core.errors import AlignmentError
from p2p.raster.grid import Grid
from p2p.raster.scene import SceneReader

RESAMPLING = ("nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average", "mode")


def intersection(a: Grid, b: Grid) -> tuple[float, float, float, float] | None:
    """Map bounds (left, bottom, right, top) shared by two grids, in `a`'s CRS; None if none."""
    left, bottom, right, top = transform_bounds(b.crs, a.crs, *b.bounds, densify_pts=21)
    al, ab, ar, at = a.bounds
    box = (max(al, left), max(ab, bottom), min(ar, right), min(at, top))
    return box if box[0] < box[2] and box[1] < box[3] else None


def _no_overlap(grid: Grid, other: Grid) -> str:
    """Why `other` (a target) and `grid` (its source) share no pixel: both extents in full,
    and the likely cause."""
    text = f"does not overlap the source grid ({grid.describe()}); its own grid is "
    text += other.describe()
    if other.crs != grid.crs:
        box = transform_bounds(other.crs, grid.crs, *other.bounds, densify_pts=21)
        moved = ", ".join(f"{v:.6f}".rstrip("0").rstrip(".") for v in box)
        text += f", extent ({moved}) in the source's CRS"
        cause = "a wrong CRS on one of the files"
    else:
        cause = "a wrong geotransform on one of the files"
    return (
        f"{text}. Likely the pair is not of one place (check the scene's source and target "
        f"paths) or {cause} (compare `gdalinfo` of both)"
    )


def open_aligned(
    paths: Sequence[str | Path] | str | Path,
    grid: Grid,
    bands: Sequence[int] | None = None,
    nodata: float | None = None,
    resampling: str = "bilinear",
) -> SceneReader:
    """Open a scene side warped onto `grid` (same CRS, transform and shape).

    Args:
        paths: One raster, or band files stacked in order.
        grid: The grid to read on, usually the source scene's.
        bands: 1-based selection over the stacked bands.
        nodata: Nodata override for these files.
        resampling: Resampling method name; bilinear suits continuous targets, nearest or mode
            suit class maps.

    Returns:
        A `SceneReader` whose `read(window)` takes windows of `grid`.

    Raises:
        InputError: unreadable files or band files on different grids.
        AlignmentError: the files do not overlap `grid`, or the method is unknown.
    """
    if resampling not in RESAMPLING:
        raise AlignmentError(
            "resampling", f"unknown method {resampling!r}; use one of {RESAMPLING}"
        )
    reader = SceneReader(paths, bands=bands, nodata=nodata, grid=grid, resampling=resampling)
    try:
        if reader.file_grid.crs is None or grid.crs is None:
            if reader.resampled:
                raise AlignmentError(reader.paths[0], "has no CRS, so it cannot be aligned")
        elif intersection(grid, reader.file_grid) is None:
            raise AlignmentError(reader.paths[0], _no_overlap(grid, reader.file_grid))
    except BaseException:
        reader.close()
        raise
    return reader
