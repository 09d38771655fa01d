"""Quicklooks: a small PNG of a whole raster, read from its overviews.

A decimated read (``out_shape`` smaller than the raster) lets GDAL serve the pixels from the
overview level nearest the asked size, so a quicklook of a COG mosaic of any size reads a few
hundred kB, not the full-resolution bands. Bands are picked by name (the file's band
descriptions) or by 1-based number and stretched between percentiles of their valid pixels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from p2p.core import storage
from p2p.core.errors import InputError
from p2p.core.fsutil import atomic_write_bytes
from p2p.model.preview import encode_png
from p2p.raster.scene import open_raster

#: Longest side of a quicklook in pixels.
SIZE = 1024
#: Percentiles of the valid pixels mapped to black and white.
STRETCH = (2.0, 98.0)


def pick_bands(names: Sequence[str | None], wanted: Sequence[str | int] | None) -> list[int]:
    """1-based band numbers for `wanted` (names or numbers); by default the first three (RGB)
    or, with fewer, the first.

    Raises:
        InputError: a name the file has not, or a number out of range.
    """
    count = len(names)
    if not wanted:
        return [1, 2, 3] if count >= 3 else [1]
    chosen = []
    for item in wanted:
        text = str(item).strip()
        if text.isdigit():
            number = int(text)
        elif text in names:
            number = list(names).index(text) + 1
        else:
            known = ", ".join(n or f"{i + 1}" for i, n in enumerate(names))
            raise InputError("--quicklook-bands", f"no band {text!r}; the bands are {known}")
        if not 1 <= number <= count:
            raise InputError("--quicklook-bands", f"band {number} is not in 1..{count}")
        chosen.append(number)
    if len(chosen) not in (1, 3):
        raise InputError("--quicklook-bands", f"give 1 band (gray) or 3 (RGB), not {len(chosen)}")
    return chosen


def stretch(data: NDArray[np.floating], valid: NDArray[np.bool_]) -> NDArray[np.uint8]:
    """`(C, H, W)` values → `(H, W, 3)` uint8, each band between its `STRETCH` percentiles
    over valid pixels; invalid pixels black."""
    out: NDArray[np.uint8] = np.zeros(data.shape, dtype=np.uint8)
    for i, band in enumerate(data):
        values = band[valid]
        if values.size == 0:
            continue
        lo, hi = np.percentile(values, STRETCH)
        scaled = (band.astype(np.float64) - lo) / max(float(hi - lo), 1e-12)
        out[i] = np.where(valid, np.clip(scaled * 255 + 0.5, 0, 255), 0).astype(np.uint8)
    if len(out) == 1:
        out = np.repeat(out, 3, axis=0)
    return np.ascontiguousarray(out.transpose(1, 2, 0))


def quicklook_png(
    path: str | Path, bands: Sequence[str | int] | None = None, size: int = SIZE
) -> bytes:
    """A PNG of the raster at `path`, its longer side `size` px at most (see the module).

    Args:
        path: A raster (a local path or an ``s3://`` URL).
        bands: Band names or 1-based numbers: one (gray) or three (RGB).
        size: Longest side of the picture in pixels.
    """
    with _env(path), open_raster(path) as ds:
        chosen = pick_bands(ds.descriptions, bands)
        scale = max(ds.width, ds.height) / size
        shape = (max(1, round(ds.height / scale)), max(1, round(ds.width / scale)))
        if scale <= 1:
            shape = (ds.height, ds.width)
        data = ds.read(chosen, out_shape=(len(chosen), *shape), masked=True)
    valid = np.asarray(~np.ma.getmaskarray(data).any(axis=0), dtype=bool)
    return encode_png(stretch(np.ma.getdata(data).astype(np.float64), valid))


def write_quicklook(
    raster: str | Path, png: str | Path | None = None, bands: Sequence[str | int] | None = None
) -> str:
    """Write the quicklook of `raster` to `png` (default: beside it, ``NAME.quicklook.png``).

    Returns:
        Where it was written.
    """
    target = str(png) if png is not None else _beside(str(raster))
    data = quicklook_png(raster, bands)
    if storage.is_remote(target):
        from p2p.core import files

        files.write_bytes(target, data)
    else:
        atomic_write_bytes(target, data)
    return target


def quicklook_markdown(raster: str | Path, title: str, size: int = 512) -> str:
    """A Markdown report of a raster: its quicklook embedded as a ``data:`` URI (so the Prefect
    UI shows it wherever the file is) under `title`."""
    import base64

    data = base64.b64encode(quicklook_png(raster, size=size)).decode("ascii")
    return f"# {title}\n\n`{raster}`\n\n![quicklook](data:image/png;base64,{data})\n"


def _beside(raster: str) -> str:
    stem = raster.rsplit(".", 1)[0] if "." in raster.rsplit("/", 1)[-1] else raster
    return f"{stem}.quicklook.png"


def _env(path: str | Path) -> contextlib.AbstractContextManager[object]:
    if not storage.is_remote(path):
        return contextlib.nullcontext()
    from p2p.raster.vsi import ObjectAccess

    env: contextlib.AbstractContextManager[object] = ObjectAccess(str(path)).env()
    return env
