"""Scene I/O: windowed reads with valid masks, alignment onto a grid, lazy xarray views.

- `SceneReader`: one scene side (a raster or band files stacked), read window by window as
  ``(data (C, h, w), valid (h, w))``; windows may extend past the edge.
- `open_aligned`: the same reader, warped onto another grid (the source's) window by window.
- `open_scene`: a lazy ``(band, y, x)`` DataArray (rioxarray + Dask), chunks on file blocks.
"""

from p2p.raster.align import RESAMPLING, intersection, open_aligned
from p2p.raster.lazy import open_scene
from p2p.raster.scene import Grid, SceneReader, open_raster

__all__ = [
    "RESAMPLING",
    "Grid",
    "SceneReader",
    "intersection",
    "open_aligned",
    "open_raster",
    "open_scene",
]
