"""The mosaic's windows: which inputs each one needs, their distance-to-edge weights, the blend.

`p2p.infer.mosaic` builds its output window by window; this module does one window. Each input
is weighted by its Euclidean distance to its nearest invalid pixel (its footprint's edge or a
nodata hole), capped at `feather`, read over the window plus a halo of `feather` pixels so the
distance is exact within the cap. The work is kept to what the pixels need, so a mosaic of many
scenes costs what its pixels cost:

- an input is read over its footprint within the halo only (outside it every pixel is invalid,
  and the row or column of slack the footprint keeps is invalid too, so distances are exact);
- a window that one input's footprint alone meets is that input's pixels, read without a halo
  and without weights (its share is exactly 1.0 where it is valid);
- the distance of a footprint that is one axis-aligned box (a scene on the mosaic's own pixel
  grid without holes) is the smaller axis distance, found in one pass;
- inputs are opened when a strip first needs them and closed once the strips are past them,
  so the open files and their caches grow with the inputs one strip meets, not all of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from p2p.raster import Grid, SceneReader, open_aligned

#: (row0, col0, row1, col1) on the output grid, the ends exclusive.
Box = tuple[int, int, int, int]


def edge_distance(valid: np.ndarray, cap: int) -> np.ndarray:
    """Euclidean distance from each valid pixel to the nearest invalid one, capped at `cap`.

    Pixels beyond the array's edge do not count as invalid. A row pass finds the horizontal
    distance; a column pass over offsets up to `cap` combines them (exact for distances up to
    `cap`, which is all that is kept). Valid pixels forming one box take a one-pass shortcut
    with the same result (`_box_distance`).

    Args:
        valid: `(h, w)` bool.
        cap: Largest distance of interest, in pixels.

    Returns:
        `(h, w)` float64: 0 where invalid, in [1, cap] where valid.
    """
    if valid.all():
        return np.full(valid.shape, float(cap))
    box = _box_distance(valid, cap)
    if box is not None:
        return box
    h, w = valid.shape
    far = 1 << 30
    idx = np.broadcast_to(np.arange(w), (h, w))
    left = np.maximum.accumulate(np.where(valid, -far, idx), axis=1)
    right = np.minimum.accumulate(np.where(valid, far, idx)[:, ::-1], axis=1)[:, ::-1]
    horizontal = np.minimum(np.minimum(idx - left, right - idx), cap + 1).astype(np.float64)
    g2 = horizontal**2
    d2 = g2.copy()
    for dy in range(1, min(cap, h - 1) + 1):
        np.minimum(d2[dy:], g2[:-dy] + dy * dy, out=d2[dy:])
        np.minimum(d2[:-dy], g2[dy:] + dy * dy, out=d2[:-dy])
    return np.minimum(np.sqrt(d2), cap)


def _box_distance(valid: np.ndarray, cap: int) -> np.ndarray | None:
    """`edge_distance` where the valid pixels are one axis-aligned box; None otherwise.

    The nearest invalid pixel of a pixel inside a box lies straight across the nearest side
    that has invalid pixels beyond it (any other is farther), so the distance is the smaller
    axis distance: the same integers the general pass finds, in one pass instead of `cap`.
    """
    r = np.flatnonzero(valid.any(axis=1))
    c = np.flatnonzero(valid.any(axis=0))
    if not r.size or r[-1] - r[0] + 1 != r.size or c[-1] - c[0] + 1 != c.size:
        return None
    if not valid[r[0] : r[-1] + 1, c[0] : c[-1] + 1].all():
        return None  # a hole
    dy = _axis_distance(valid.shape[0], int(r[0]), int(r[-1]), cap)
    dx = _axis_distance(valid.shape[1], int(c[0]), int(c[-1]), cap)
    d: np.ndarray = np.minimum(dy[:, None], dx[None, :]).astype(np.float64)
    d[~valid] = 0.0
    return d


def _axis_distance(n: int, first: int, last: int, cap: int) -> np.ndarray:
    """`(n,)` distance along one axis from each index to the nearest index outside
    [first, last] but inside [0, n) (the array's edge does not count), capped at `cap`."""
    i = np.arange(n)
    d = np.full(n, cap)
    if first > 0:
        np.minimum(d, i - first + 1, out=d)
    if last < n - 1:
        np.minimum(d, last + 1 - i, out=d)
    return d


def footprint(grid: Grid, file_grid: Grid) -> Box:
    """The box of `grid` that a raster on `file_grid` may cover, with a row and column of slack
    on each side (wholly outside the raster, so invalid) where the grid goes on. Without a CRS
    (one input alone, `p2p.infer.mosaic.check_crs`) its bounds are taken as they are."""
    box = tuple(file_grid.bounds)
    if file_grid.crs is not None and grid.crs is not None:
        box = transform_bounds(file_grid.crs, grid.crs, *file_grid.bounds, densify_pts=21)
    inv = ~grid.transform
    cols, rows = zip(
        *(inv @ (x, y) for x in (box[0], box[2]) for y in (box[1], box[3])), strict=True
    )
    return (
        max(0, math.floor(min(rows)) - 1),
        max(0, math.floor(min(cols)) - 1),
        min(grid.height, math.ceil(max(rows)) + 1),
        min(grid.width, math.ceil(max(cols)) + 1),
    )


def _clip(a: Box, b: Box) -> Box | None:
    """The intersection of two boxes, or None when they do not meet."""
    box = (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    return box if box[2] > box[0] and box[3] > box[1] else None


def _window(box: Box) -> Window:
    return Window(box[1], box[0], box[3] - box[1], box[2] - box[0])


class Inputs:
    """The mosaic's inputs on its grid: their footprints, and readers (warped onto the grid)
    opened on first use and closed by `release` once the strips are past them."""

    def __init__(
        self, paths: Sequence[str | Path], grids: Sequence[Grid], grid: Grid, resampling: str
    ) -> None:
        self.paths = list(paths)
        self.grid = grid
        self.boxes = [footprint(grid, g) for g in grids]
        self._array = np.array(self.boxes, dtype=np.int64).reshape(-1, 4)
        self._resampling = resampling
        self._open: dict[int, SceneReader] = {}

    def meeting(self, box: Box) -> list[int]:
        """The inputs whose footprint meets `box`, in input order."""
        b = self._array
        meets = (b[:, 0] < box[2]) & (b[:, 2] > box[0]) & (b[:, 1] < box[3]) & (b[:, 3] > box[1])
        return [int(i) for i in np.flatnonzero(meets)]

    def reader(self, i: int) -> SceneReader:
        if i not in self._open:
            self._open[i] = open_aligned(self.paths[i], self.grid, resampling=self._resampling)
        return self._open[i]

    def release(self, row: int) -> None:
        """Close the inputs whose footprints end above `row`."""
        for i in [i for i in self._open if self.boxes[i][2] <= row]:
            self._open.pop(i).close()

    def close(self) -> None:
        for reader in self._open.values():
            reader.close()
        self._open.clear()

    def depth(self, window: int, feather: int) -> int:
        """The most inputs one `window`-sided output window and its halo meet."""
        rows = math.ceil(self.grid.height / window)
        cols = math.ceil(self.grid.width / window)
        count = np.zeros((rows, cols), dtype=np.int64)
        for r0, c0, r1, c1 in self.boxes:  # windows j whose halo [jW - f, (j+1)W + f) meets
            j0, k0 = max(0, (r0 - feather) // window), max(0, (c0 - feather) // window)
            count[j0 : (r1 + feather - 1) // window + 1, k0 : (c1 + feather - 1) // window + 1] += 1
        return int(count.max(initial=0))


def blend_window(
    inputs: Inputs, core: Window, feather: int, bands: int
) -> tuple[np.ndarray, np.ndarray]:
    """Blend the inputs over one output window (see the module docstring).

    Returns:
        values: `(bands, h, w)` float64 in the inputs' units.
        valid: `(h, w)` bool, true where any input is valid.
    """
    grid = inputs.grid
    r0, c0 = int(core.row_off), int(core.col_off)
    h, w = int(core.height), int(core.width)
    box = (r0, c0, r0 + h, c0 + w)
    values = np.zeros((bands, h, w))
    near = inputs.meeting(box)
    if len(near) == 1:  # alone: its pixels, no halo, no weights
        return _alone(inputs, near[0], box, values)
    halo = (max(0, r0 - feather), max(0, c0 - feather),
            min(grid.height, r0 + h + feather), min(grid.width, c0 + w + feather))  # fmt: skip
    total = np.zeros((h, w))
    parts: list[tuple[np.ndarray, np.ndarray, tuple[slice, slice]]] = []
    for i in near:
        sub = _clip(inputs.boxes[i], halo)
        inner = _clip(inputs.boxes[i], box)
        if sub is None or inner is None:
            continue
        data, valid = inputs.reader(i).read(_window(sub))
        here = (slice(inner[0] - sub[0], inner[2] - sub[0]),
                slice(inner[1] - sub[1], inner[3] - sub[1]))  # fmt: skip
        if not valid[here].any():
            continue
        weight = edge_distance(valid, feather)[here]
        region = (slice(inner[0] - r0, inner[2] - r0), slice(inner[1] - c0, inner[3] - c0))
        parts.append((data[:, here[0], here[1]].astype(np.float64), weight, region))
        total[region] += weight
    covered = total > 0
    safe = np.where(covered, total, 1.0)
    for data, weight, region in parts:
        share = weight / safe[region]  # exactly 1.0 where this input is alone: values copy
        values[:, region[0], region[1]] += np.where(share > 0, data * share, 0.0)
    return values, covered


def _alone(inputs: Inputs, i: int, box: Box, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The window `box` that input `i` alone meets: its valid pixels into `values`."""
    covered = np.zeros(values.shape[1:], dtype=bool)
    inner = _clip(inputs.boxes[i], box)
    if inner is None:
        return values, covered
    data, valid = inputs.reader(i).read(_window(inner))
    region = (
        slice(inner[0] - box[0], inner[2] - box[0]),
        slice(inner[1] - box[1], inner[3] - box[1]),
    )
    values[:, region[0], region[1]] = np.where(valid, data, 0)
    covered[region] = valid
    return values, covered
