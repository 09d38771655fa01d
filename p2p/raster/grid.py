"""A raster grid (CRS, transform, shape): what two rasters must share to be read pixel for
pixel, and how one lies on another's pixel lattice."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from affine import Affine
from rasterio.coords import BoundingBox
from rasterio.crs import CRS
from rasterio.windows import Window

# Pixel-size tolerance when deciding that two grids are the same (no resampling needed).
GRID_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Grid:
    """A raster grid: CRS, pixel-to-map transform and shape in pixels."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @classmethod
    def of(cls, dataset: Any) -> Grid:
        """The grid of an open rasterio dataset."""
        return cls(dataset.crs, dataset.transform, int(dataset.width), int(dataset.height))

    @property
    def bounds(self) -> BoundingBox:
        """(left, bottom, right, top) in CRS units."""
        return self.window_bounds(Window(0, 0, self.width, self.height))

    @property
    def res(self) -> tuple[float, float]:
        """Pixel size (x, y) in CRS units, both positive."""
        return abs(self.transform.a), abs(self.transform.e)

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return self.height, self.width

    def window_bounds(self, window: Window) -> BoundingBox:
        """Map bounds (left, bottom, right, top) of a pixel window of this grid."""
        x0, y0 = self.transform @ (window.col_off, window.row_off)
        x1, y1 = self.transform @ (window.col_off + window.width, window.row_off + window.height)
        return BoundingBox(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))

    def matches(self, other: Grid) -> bool:
        """True when both grids have the same CRS, shape and (nearly) the same transform."""
        return (
            self.width == other.width
            and self.height == other.height
            and self.crs == other.crs
            and self.transform.almost_equals(other.transform, precision=GRID_TOLERANCE)
        )

    def offset_on(self, other: Grid) -> tuple[int, int] | None:
        """(row, col) of this grid's first pixel on `other` when both share the CRS and the
        pixel lattice (same pixel size, origins whole pixels apart), else None."""
        t, o = self.transform, other.transform
        if self.crs != other.crs or o.a == 0 or o.e == 0:
            return None
        col, row = round((t.c - o.c) / o.a), round((t.f - o.f) / o.e)
        shifted = o * Affine.translation(col, row)
        return (row, col) if t.almost_equals(shifted, precision=GRID_TOLERANCE) else None

    def describe(self) -> str:
        """Text for error messages, with full coordinates (a northing as ``5800000``, not
        ``5.8e+06``): ``EPSG:32633, 64x64 px of 10x10, extent (left, bottom, right, top)``."""
        crs = self.crs.to_string() if self.crs else "no CRS"
        extent = ", ".join(_coordinate(v) for v in self.bounds)
        return (
            f"{crs}, {self.width}x{self.height} px of {_coordinate(self.res[0])}x"
            f"{_coordinate(self.res[1])}, extent ({extent})"
        )


def _coordinate(value: float) -> str:
    """A coordinate or pixel size in full: at most 6 decimals, no exponent, no trailing 0s."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text
