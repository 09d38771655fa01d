"""Windowed, memory-bounded reading of one scene side (one raster or band files stacked).

A `SceneReader` validates its files up front (they open, band files share one grid, band
numbers exist) and then reads any window, also windows that reach past the scene's edge, as
``(data, valid)``: data in the file dtype, and a valid mask that combines nodata (from the files
or a per-scene override), NaN, and the files' internal masks or alpha bands. Given a `grid`, it
warps each file onto that grid window by window (`rasterio.vrt.WarpedVRT`), so memory stays
bounded by the window whatever the scene size; files on the grid's pixel lattice (same CRS and
pixel size, origins whole pixels apart: scenes of one mosaic) are read directly, shifted.
Reader objects hold open GDAL handles and are not thread-safe: open one per thread or Dask task
(opening costs milliseconds).
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from p2p.core import storage
from p2p.core.errors import InputError
from p2p.raster.grid import Grid
from p2p.raster.vsi import ObjectAccess

log = logging.getLogger(__name__)


def open_raster(path: str | Path, access: ObjectAccess | None = None) -> DatasetReader:
    """Open one raster with rasterio, raising a one-line `InputError` when it cannot be read.

    Args:
        path: A local path, a GDAL name (``/vsi...``) or an ``s3://`` URL (read in place).
        access: GDAL settings and credentials for a URL; made from the environment when None.
    """
    if storage.is_remote(path):
        return _open_remote(str(path), access or ObjectAccess(str(path)))
    p = Path(path)
    if not p.exists() and "://" not in str(path) and not str(path).startswith("/vsi"):
        raise InputError(path, "file not found")
    try:
        with warnings.catch_warnings():
            # Chips exported without georeference are fine to read; their grid is pixels.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(path)
    except RasterioIOError:
        raise InputError(path, "not a raster GDAL can open") from None
    if _truncated(ds, p):
        ds.close()
        raise InputError(
            path, "is truncated or corrupt (its last tile lies past the end of the file)"
        )
    return ds


def _open_remote(url: str, access: ObjectAccess) -> DatasetReader:
    """Open an object in place through ``/vsis3/``; on failure, ask S3 why (one line)."""
    try:
        with access.env(), warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(storage.gdal_path(url))
    except RasterioIOError:
        pass
    storage.require_file(url)  # raises: no credentials, no such bucket or key, access denied
    raise InputError(url, "not a raster GDAL can open")


def _truncated(ds: DatasetReader, path: Path) -> bool:
    """Whether a local GeoTIFF's last tile of the first or last band ends past the file's end.

    Headers come first, so a copy or download cut short still opens and fails only when the
    missing tiles are read, possibly hours in; this check costs a few metadata look-ups and
    catches it before any work. Sparse (never written) tiles have offset 0 and are fine.
    """
    if ds.driver != "GTiff" or not path.is_file():
        return False
    rows, cols = ds.block_shapes[0]
    last = f"{math.ceil(ds.width / cols) - 1}_{math.ceil(ds.height / rows) - 1}"
    size = path.stat().st_size
    for band in {1, ds.count}:
        offset = ds.get_tag_item(f"BLOCK_OFFSET_{last}", "TIFF", bidx=band)
        length = ds.get_tag_item(f"BLOCK_SIZE_{last}", "TIFF", bidx=band)
        if offset and length and int(offset) > 0 and int(offset) + int(length) > size:
            return True
    return False


def _default_bands(ds: DatasetReader) -> list[int]:
    """All bands except alpha bands, which act as masks, not data."""
    return [i for i, ci in enumerate(ds.colorinterp, start=1) if ci != ColorInterp.alpha] or [1]


def _is_nan(value: float | None) -> bool:
    return value is not None and math.isnan(value)


class SceneReader:
    """Windowed reader of one scene side: one raster, or band files stacked in order.

    Args:
        paths: One raster path, or several band files stacked in order.
        bands: 1-based selection over the stacked bands (all non-alpha bands when None).
        nodata: Nodata value overriding the files' own.
        grid: When given, every file is warped onto this grid (files already on it are read
            directly, without resampling); windows then refer to this grid.
        resampling: Resampling method name used when warping ("bilinear", "nearest", ...).

    Raises:
        InputError: a file is missing or unreadable, band files are on different grids, or a
            band number is out of range.
    """

    def __init__(
        self,
        paths: Sequence[str | Path] | str | Path,
        bands: Sequence[int] | None = None,
        nodata: float | None = None,
        grid: Grid | None = None,
        resampling: str = "bilinear",
    ) -> None:
        self.paths = [str(paths)] if isinstance(paths, str | Path) else [str(p) for p in paths]
        if not self.paths:
            raise InputError("scene", "no raster files given")
        self._files: list[DatasetReader] = []
        self._readers: list[Any] = []
        remote = [p for p in self.paths if storage.is_remote(p)]
        self._access = ObjectAccess(remote[0]) if remote else None
        try:
            with self._env():
                self._open(bands, nodata, grid, resampling)
        except BaseException:
            self.close()
            raise

    def _open(
        self, bands: Sequence[int] | None, nodata: float | None, grid: Grid | None, resampling: str
    ) -> None:
        self._files = [open_raster(p, self._access) for p in self.paths]
        first = self._files[0]
        file_grid = Grid.of(first)
        for path, ds in zip(self.paths[1:], self._files[1:], strict=True):
            if not Grid.of(ds).matches(file_grid):
                raise InputError(
                    path,
                    f"grid ({Grid.of(ds).describe()}) differs from {self.paths[0]} "
                    f"({file_grid.describe()}); band files of one scene must share the grid",
                )
        stacked = [(i, b) for i, ds in enumerate(self._files) for b in range(1, ds.count + 1)]
        if bands is None:
            picks = [(i, b) for i, ds in enumerate(self._files) for b in _default_bands(ds)]
        else:
            bad = [b for b in bands if not 1 <= b <= len(stacked)]
            if bad:
                raise InputError(
                    self.paths[0] if len(self.paths) == 1 else ", ".join(self.paths),
                    f"band {bad[0]} out of range: the scene has {len(stacked)} band(s)",
                )
            picks = [stacked[b - 1] for b in bands]
        self._picks = picks
        self.band_nodata = [
            nodata if nodata is not None else self._files[i].nodatavals[b - 1] for i, b in picks
        ]
        self.nodata: float | None = nodata if nodata is not None else self.band_nodata[0]
        self.dtype: str = str(np.result_type(*[self._files[i].dtypes[b - 1] for i, b in picks]))
        self.count = len(picks)
        self.band_names = [self._band_name(i, b) for i, b in picks]
        self.file_grid = file_grid
        self.resampled = grid is not None and not grid.matches(file_grid)
        self.grid: Grid = grid if grid is not None else file_grid
        # files on the grid's pixel lattice (a scene in a mosaic) are read directly, shifted
        self._shift = file_grid.offset_on(self.grid) if self.resampled else (0, 0)
        self._readers = [
            self._warp(ds, resampling, nodata) if self._shift is None else ds for ds in self._files
        ]
        self._masked = [self._has_mask(k) for k in range(len(self._readers))]
        # The alpha band a warp added (1-based index in the warped view), read as the mask
        # directly: GDAL does not always report it in the data bands' mask flags (float32).
        self._alpha = [
            r.count if self.resampled and self._files[k].count < r.count else None
            for k, r in enumerate(self._readers)
        ]

    def tags(self) -> dict[str, str]:
        """The dataset tags (GDAL metadata) of the first file."""
        return dict(self._files[0].tags())

    def _env(self) -> contextlib.AbstractContextManager[Any]:
        """GDAL's object-store settings (thread-local in worker threads) while reading URLs."""
        return self._access.env() if self._access is not None else contextlib.nullcontext()

    def _band_name(self, file_index: int, band: int) -> str:
        ds = self._files[file_index]
        if ds.descriptions[band - 1]:
            return str(ds.descriptions[band - 1])
        if len(self._files) == 1:
            return f"band_{band}"
        stem = Path(self.paths[file_index]).stem
        return stem if ds.count == 1 else f"{stem}_{band}"

    def _warp(self, ds: DatasetReader, resampling: str, nodata: float | None) -> WarpedVRT:
        src_nodata = nodata if nodata is not None else ds.nodata
        options: dict[str, Any] = {}
        if src_nodata is None:
            # Without nodata the warper marks pixels outside the file through an alpha band.
            options["add_alpha"] = True
        else:
            options.update(src_nodata=src_nodata, nodata=src_nodata)
        return WarpedVRT(
            ds,
            crs=self.grid.crs,
            transform=self.grid.transform,
            width=self.grid.width,
            height=self.grid.height,
            resampling=Resampling[resampling],
            **options,
        )

    def _has_mask(self, k: int) -> bool:
        """Whether reader `k` carries an internal mask or alpha band worth reading."""
        flags = self._readers[k].mask_flag_enums
        return any(MaskFlags.per_dataset in f or MaskFlags.alpha in f for f in flags)

    @property
    def block_shape(self) -> tuple[int, int]:
        """Internal block (tile) shape (rows, cols) of the first file."""
        rows, cols = self._files[0].block_shapes[0]
        return int(rows), int(cols)

    @property
    def fill_value(self) -> float:
        """Value written where there is no data (outside the scene): nodata, else 0."""
        if self.nodata is None:
            return 0
        if _is_nan(self.nodata) and not np.issubdtype(np.dtype(self.dtype), np.floating):
            return 0
        return self.nodata

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Read a window of the (stacked, selected, possibly warped) bands.

        Args:
            window: Pixel window on `grid`; it may extend past the grid's edges.

        Returns:
            data: ``(count, h, w)`` in `dtype`, `fill_value` outside the grid.
            valid: ``(h, w)`` bool, False outside the grid, where any band is nodata or NaN,
                and where a file's internal mask or alpha says so.
        """
        col, row = round(window.col_off), round(window.row_off)
        h, w = round(window.height), round(window.width)
        dr, dc = self._shift or (0, 0)  # where the readers' first pixel lies on the grid
        top, left = max(0, dr), max(0, dc)
        bottom, right = self.grid.height, self.grid.width
        if self._shift is not None:
            bottom, right = (
                min(bottom, dr + self.file_grid.height),
                min(right, dc + self.file_grid.width),
            )
        c0, r0 = max(col, left), max(row, top)
        c1, r1 = min(col + w, right), min(row + h, bottom)
        if (c0, r0, c1, r1) == (col, row, col + w, row + h) and h > 0 and w > 0:
            # wholly inside (most windows): no fill and no second copy of the pixels
            with self._env():
                return self._read_inner(Window(col - dc, row - dr, w, h))
        data = np.full((self.count, h, w), self.fill_value, dtype=self.dtype)
        valid = np.zeros((h, w), dtype=bool)
        if c1 <= c0 or r1 <= r0:
            return data, valid
        inner = Window(c0 - dc, r0 - dr, c1 - c0, r1 - r0)
        ys, xs = slice(r0 - row, r1 - row), slice(c0 - col, c1 - col)
        with self._env():
            data[:, ys, xs], valid[ys, xs] = self._read_inner(inner)
        return data, valid

    def _read_inner(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Read a window lying wholly inside the grid."""
        shape = (int(window.height), int(window.width))
        data = np.empty((self.count, *shape), dtype=self.dtype)
        valid = np.ones(shape, dtype=bool)
        for k, reader in enumerate(self._readers):
            slots = [n for n, (i, _) in enumerate(self._picks) if i == k]
            if not slots:
                continue
            indexes = [self._picks[n][1] for n in slots]
            try:
                self._read_bands(k, indexes, slots, window, data)
                alpha = self._alpha[k]
                if alpha is not None:
                    valid &= reader.read(alpha, window=window) > 0
                elif self._masked[k]:
                    valid &= reader.read_masks(indexes[0], window=window) > 0
            except RasterioIOError as exc:
                # a damaged tile found mid-run: name the file, not GDAL's internals
                detail = str(exc).splitlines()[0] if str(exc) else "read failed"
                raise InputError(
                    self.paths[k],
                    f"cannot read rows {window.row_off}..{window.row_off + window.height}: "
                    f"truncated or corrupt file ({detail})",
                ) from None
        for n, nod in enumerate(self.band_nodata):
            if nod is not None and not _is_nan(nod):
                valid &= data[n] != nod
        if np.issubdtype(data.dtype, np.floating):
            valid &= ~np.isnan(data).any(axis=0)
        return data, valid

    def _read_bands(
        self, k: int, indexes: list[int], slots: list[int], window: Window, data: np.ndarray
    ) -> None:
        """Read bands `indexes` of reader `k` into `data[slots]` (``(count, h, w)``).

        Bands stored in `dtype` and landing in consecutive slots (the usual case) are decoded
        straight into `data`; otherwise they are read and then cast by numpy.
        """
        reader = self._readers[k]
        consecutive = slots == list(range(slots[0], slots[0] + len(slots)))
        if consecutive and all(reader.dtypes[b - 1] == self.dtype for b in indexes):
            reader.read(indexes, window=window, out=data[slots[0] : slots[0] + len(slots)])
        else:
            data[slots] = reader.read(indexes, window=window)

    def close(self) -> None:
        """Close the files (and warped views)."""
        for handle in [*self._readers, *self._files]:
            if not handle.closed:
                handle.close()

    def __enter__(self) -> SceneReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
