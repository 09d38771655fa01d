"""Scene I/O: windowed reads with valid masks and alignment onto a grid.

- `SceneReader`: one scene side (a raster or band files stacked), read window by window as
  ``(data (C, h, w), valid (h, w))``; windows may extend past the edge.
- `open_aligned`: the same reader, warped onto another grid (the source's) window by window.

`p2p.raster.lazy.open_scene` gives a lazy xarray view (rioxarray + Dask) for notebooks; it is
not imported here, so the engines never pay for xarray.
"""

from p2p.raster.align import RESAMPLING, intersection, open_aligned
from p2p.raster.grid import Grid
from p2p.raster.scene import SceneReader, open_raster

__all__ = [
    "RESAMPLING",
    "Grid",
    "SceneReader",
    "intersection",
    "open_aligned",
    "open_raster",
]
