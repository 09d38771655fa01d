"""Lazy xarray view of a scene side (rioxarray + Dask), for notebooks and Dask graphs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import rioxarray
import xarray as xr

from p2p.raster.scene import SceneReader

DEFAULT_CHUNK = 1024


def chunk_side(block: int, target: int) -> int:
    """The multiple of the file's block side closest to (and at least) `target` pixels."""
    return max(block, -(-target // block) * block)


def open_scene(
    paths: Sequence[str | Path] | str | Path,
    bands: Sequence[int] | None = None,
    nodata: float | None = None,
    chunks: int = DEFAULT_CHUNK,
) -> xr.DataArray:
    """Open a scene side lazily as one ``(band, y, x)`` Dask-backed DataArray.

    Files are validated like `SceneReader` (they open, share a grid, bands exist). Chunks span
    all bands and are a multiple of the file's internal blocks, so each chunk decodes whole
    blocks once.

    Args:
        paths: One raster, or band files stacked in order.
        bands: 1-based selection over the stacked bands (non-alpha bands when None).
        nodata: Nodata override, stored with ``rio.write_nodata`` and in ``attrs["nodata"]``.
        chunks: Approximate chunk side in pixels, rounded up to whole blocks.

    Returns:
        DataArray ``(band, y, x)`` in the file dtype, with CRS, transform, band names in
        ``attrs["long_name"]`` and the nodata value.
    """
    with SceneReader(paths, bands=bands, nodata=nodata) as reader:
        picks = list(reader._picks)
        block_rows, block_cols = reader.block_shape
        names, value, file_paths = reader.band_names, reader.nodata, reader.paths
    size = {"y": chunk_side(block_rows, chunks), "x": chunk_side(block_cols, chunks)}
    parts = []
    for k, path in enumerate(file_paths):
        wanted = [b for i, b in picks if i == k]
        if not wanted:
            continue
        arr = rioxarray.open_rasterio(path, chunks={"band": -1, **size}, masked=False)
        assert isinstance(arr, xr.DataArray)
        parts.append(arr.sel(band=wanted))
    stacked = parts[0]
    if len(parts) > 1:
        # Concatenate per file, then restore the selection's order when it interleaves files.
        stacked = xr.concat(parts, dim="band", combine_attrs="drop_conflicts")
        stacked = stacked.isel(band=_positions(picks))
    stacked = stacked.assign_coords(band=list(range(1, len(picks) + 1)))
    stacked = stacked.rio.write_nodata(value, encoded=False) if value is not None else stacked
    stacked.attrs.update(long_name=tuple(names), nodata=value, band_names=list(names))
    stacked.name = Path(file_paths[0]).stem
    return stacked


def _positions(picks: list[tuple[int, int]]) -> list[int]:
    """Where each picked band sits after concatenating per-file selections in file order."""
    concat_order = sorted(range(len(picks)), key=lambda n: (picks[n][0], n))
    where = {n: pos for pos, n in enumerate(concat_order)}
    return [where[n] for n in range(len(picks))]
