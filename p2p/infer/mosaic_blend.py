"""The mosaic's windows: which inputs each one needs, their distance-to-edge weights, the blend.

`p2p.infer.mosaic` builds its output window by window; this module does one window. Each input
is weighted by its Euclidean distance to its nearest invalid pixel (its footprint's edge or a
nodata hole), capped at `feather`, read over the window plus a halo of `feather` pixels so the
distance is exact within the cap. The work is kept to what the pixels need, so a mosaic of many
scenes costs what its pixels cost:

- an input is read over its footprint within the halo only (outside it every pixel is invalid,
  and the row or column of slack the footprint keeps is invalid too, so distances are exact);
- a window that one input's footprint alone meets is read without a halo;
- a window is cut along the edges of its inputs' footprints into cells that the same inputs
  cover; a cell one input alone covers is its pixels, copied without weights (its share would
  be exactly 1.0 where it is valid), so weights are found only where scenes overlap, each over
  its cell grown by `feather` (the halo's distances, over less);
- the distance of a footprint that is one axis-aligned box (a scene on the mosaic's own pixel
  grid without holes) is the smaller axis distance, found in one pass;
- inputs are opened when a strip first needs them and closed once the strips are past them,
  so the open files and their caches grow with the inputs one strip meets, not all of them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from p2p.raster import Grid, SceneReader, geotiff, open_aligned

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


def _extent(grid: Grid, file_grid: Grid) -> tuple[float, float, float, float]:
    """`(row0, col0, row1, col1)`: the bounds of a raster on `file_grid` in `grid`'s pixel
    coordinates (fractional). Without a CRS (one input alone,
    `p2p.infer.mosaic.check_crs`) its bounds are taken as they are."""
    box = tuple(file_grid.bounds)
    if file_grid.crs is not None and grid.crs is not None:
        box = transform_bounds(file_grid.crs, grid.crs, *file_grid.bounds, densify_pts=21)
    inv = ~grid.transform
    cols, rows = zip(
        *(inv @ (x, y) for x in (box[0], box[2]) for y in (box[1], box[3])), strict=True
    )
    return min(rows), min(cols), max(rows), max(cols)


def footprint(grid: Grid, file_grid: Grid) -> Box:
    """The box of `grid` that a raster on `file_grid` may cover, with a row and column of slack
    on each side (wholly outside the raster, so invalid) where the grid goes on."""
    r0, c0, r1, c1 = _extent(grid, file_grid)
    return (
        max(0, math.floor(r0) - 1),
        max(0, math.floor(c0) - 1),
        min(grid.height, math.ceil(r1) + 1),
        min(grid.width, math.ceil(c1) + 1),
    )


def _shrink(box: Box, grid: Grid) -> Box:
    """A `footprint` without its slack: the pixels the raster may cover (possibly none)."""
    r0, c0, r1, c1 = box
    return (
        r0 + 1 if r0 > 0 else 0,
        c0 + 1 if c0 > 0 else 0,
        r1 - 1 if r1 < grid.height else r1,
        c1 - 1 if c1 < grid.width else c1,
    )


def _clip(a: Box, b: Box) -> Box | None:
    """The intersection of two boxes, or None when they do not meet."""
    box = (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    return box if box[2] > box[0] and box[3] > box[1] else None


def _grow(box: Box, by: int, grid: Grid) -> Box:
    """`box` grown by `by` pixels on each side, within `grid`."""
    return (max(0, box[0] - by), max(0, box[1] - by),
            min(grid.height, box[2] + by), min(grid.width, box[3] + by))  # fmt: skip


def _at(box: Box, origin: Box) -> tuple[slice, slice]:
    """The slices of `box` in an array covering `origin` (which holds it)."""
    r, c = origin[0], origin[1]
    return slice(box[0] - r, box[2] - r), slice(box[1] - c, box[3] - c)


def _window(box: Box) -> Window:
    return Window(box[1], box[0], box[3] - box[1], box[2] - box[0])


class Inputs:
    """The mosaic's inputs on its grid: their footprints, and readers (warped onto the grid)
    opened on first use and closed by `release` once the strips are past them.

    Attributes:
        boxes: Each input's `footprint` (with its invalid slack).
        cores: The same without the slack: where the input may be valid.
        direct: Whether each input is read without warping (`_reads`).
    """

    def __init__(
        self, paths: Sequence[str | Path], grids: Sequence[Grid], grid: Grid, resampling: str
    ) -> None:
        self.paths = list(paths)
        self.grid = grid
        self.boxes = [footprint(grid, g) for g in grids]
        self.cores = [_shrink(b, grid) for b in self.boxes]
        # read directly, not warped (`SceneReader`): on the grid or on its pixel lattice
        self.direct = [g.matches(grid) or g.offset_on(grid) is not None for g in grids]
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


@dataclass(frozen=True)
class _Patch:
    """One input read over `box` of the output grid: `data` `(C, h, w)`, `valid` `(h, w)`."""

    box: Box
    data: np.ndarray
    valid: np.ndarray


def blend_window(inputs: Inputs, box: Box, feather: int, out: np.ndarray, nodata: float) -> None:
    """Blend the inputs over one output window into `out` (see the module docstring).

    Args:
        inputs: The mosaic's inputs.
        box: The window on the output grid.
        feather: Cap of the distance weights, in pixels.
        out: `(bands, h, w)` of the output's dtype over `box`, holding `nodata`: the pixels
            any input covers are written (`p2p.raster.geotiff.to_dtype`), the rest kept.
        nodata: The output's nodata.
    """
    near = inputs.meeting(box)
    cells = _cells(inputs, near, box)
    patches = {i: _Patch(sub, *inputs.reader(i).read(_window(sub)))
               for i, sub in _reads(inputs, near, cells, box, feather).items()}  # fmt: skip
    for cell, cover in cells:
        dst = out[(slice(None), *_at(cell, box))]
        if len(cover) == 1:
            patch = patches[cover[0]]
            at = _at(cell, patch.box)
            _fill(dst, patch.data[(slice(None), *at)], patch.valid[at], nodata)
        else:
            values, covered = _blend_cell(inputs, [patches[i] for i in cover], cell, feather)
            dst[...] = geotiff.to_dtype(values, covered, str(dst.dtype), nodata)


def _reads(
    inputs: Inputs,
    near: Sequence[int],
    cells: Sequence[tuple[Box, list[int]]],
    box: Box,
    feather: int,
) -> dict[int, Box]:
    """The box each input of a window is read over.

    An input read directly (on the grid's pixel lattice) is read over its core within the
    window, and over the halo only as far as the overlap cells it blends need it (the cells
    grown by `feather`); one that no cell needs is not read. A warped input is read over its
    footprint within the window's halo (without the halo where it alone meets the window), as
    `MOSAIC_FORMAT` 3 read it: GDAL's approximate warp gives values that depend on the window
    read, so the reads keep its values.
    """
    halo = box if len(near) == 1 else _grow(box, feather, inputs.grid)
    used = {i for _, cover in cells for i in cover}
    reads: dict[int, Box] = {}
    for i in near:
        if not inputs.direct[i]:
            sub = _clip(inputs.boxes[i], halo)
        elif i in used:
            sub = _clip(inputs.cores[i], box)
        else:
            continue
        for cell, cover in cells:
            if len(cover) > 1 and i in cover and sub is not None:
                grown = _clip(_grow(cell, feather, inputs.grid), inputs.boxes[i])
                sub = _union(sub, grown) if grown is not None else sub
        if sub is not None:
            reads[i] = sub
    return reads


def _union(a: Box, b: Box) -> Box:
    """The smallest box holding both."""
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def _cells(inputs: Inputs, near: Sequence[int], box: Box) -> list[tuple[Box, list[int]]]:
    """`box` cut along the edges of the `near` inputs' cores into cells each of which the same
    inputs may cover (in input order), side by side cells of one cover merged; cells no input
    covers are left out."""
    cores = [(i, c) for i in near if (c := _clip(inputs.cores[i], box)) is not None]
    ys = sorted({box[0], box[2], *(c[0] for _, c in cores), *(c[2] for _, c in cores)})
    xs = sorted({box[1], box[3], *(c[1] for _, c in cores), *(c[3] for _, c in cores)})
    cells: list[tuple[Box, list[int]]] = []
    for y0, y1 in itertools.pairwise(ys):
        last: tuple[Box, list[int]] | None = None
        for x0, x1 in itertools.pairwise(xs):
            cover = [i for i, c in cores if c[0] <= y0 and y1 <= c[2] and c[1] <= x0 and x1 <= c[3]]
            if last is not None and last[1] == cover:
                last = ((y0, last[0][1], y1, x1), cover)
                cells[-1] = last
            elif cover:
                last = ((y0, x0, y1, x1), cover)
                cells.append(last)
            else:
                last = None
    return cells


def _blend_cell(
    inputs: Inputs, patches: Sequence[_Patch], cell: Box, feather: int
) -> tuple[np.ndarray, np.ndarray]:
    """The distance-weighted blend of the patches over `cell`, which their cores all cover.

    Each weight is the input's capped distance to its nearest invalid pixel, found over the
    cell grown by `feather` (every pixel that close; beyond the footprint all are invalid and
    its slack is in it): the distances of the whole window's halo, over less.

    Returns:
        values: `(bands, h, w)` float64 in the inputs' units.
        covered: `(h, w)` bool, true where any input is valid.
    """
    grown = _grow(cell, feather, inputs.grid)
    shape = (cell[2] - cell[0], cell[3] - cell[1])
    total = np.zeros(shape)
    parts = []
    for patch in patches:
        crop = _clip(grown, patch.box)
        assert crop is not None  # the patch holds the cell
        weight = edge_distance(patch.valid[_at(crop, patch.box)], feather)[_at(cell, crop)]
        parts.append((patch.data[(slice(None), *_at(cell, patch.box))], weight))
        total += weight
    covered = total > 0
    safe = np.where(covered, total, 1.0)
    values = np.zeros((patches[0].data.shape[0], *shape))
    for data, weight in parts:
        share = weight / safe  # exactly 1.0 where this input alone is valid: values copy
        values += np.where(share > 0, data * share, 0.0)
    return values, covered


def _fill(dst: np.ndarray, data: np.ndarray, valid: np.ndarray, nodata: float) -> None:
    """Write one input's valid pixels into `dst` (which holds `nodata`) as
    `p2p.raster.geotiff.to_dtype` casts them; integers up to 32 bits (exact in the blend's
    float64) are copied as they are, nodata moved one step inward where a valid pixel has it."""
    dt = dst.dtype
    if dt.kind not in "iu" or dt.itemsize > 4 or data.dtype != dt:
        dst[...] = geotiff.to_dtype(data, valid, str(dt), nodata)
        return
    np.copyto(dst, data, where=valid)
    clash = valid & (data == nodata)
    if clash.any():
        dst[clash] = nodata + (1 if nodata < np.iinfo(dt).max else -1)
