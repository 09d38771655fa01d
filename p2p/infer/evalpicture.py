"""The picture `p2p evaluate` draws: source | prediction | target | error for three windows it
picks by their error (the largest, the median and the smallest MAE).

While scoring, each scored window is cut into square tiles and the MAE of every tile that is
almost all valid is kept (`tile_errors`); no extra pass reads the rasters. The picked tiles
are read again, drawn with prediction and target on one stretch (so their values compare),
scaled with nearest neighbour to at least `MIN_SIDE` px, and titled with the band names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from rasterio.windows import Window

from p2p.core.fsutil import atomic_path
from p2p.raster import SceneReader

#: Side in pixels of the tiles the picture picks from.
TILE = 128
#: A tile counts only when this fraction of it is valid in both rasters.
MIN_VALID = 0.9
#: Smallest side a tile is drawn at (nearest-neighbour upscaling).
MIN_SIDE = 256
#: (MAE in target units, the tile on the prediction's grid).
TileError = tuple[float, Window]


def tile_errors(
    pred: NDArray[np.floating], ref: NDArray[np.floating], valid: NDArray[np.bool_],
    window: Window, side: int,
) -> list[TileError]:  # fmt: skip
    """The MAE of each `side` x `side` tile of one scored window (tiles mostly valid only).

    Args:
        pred: `(C, h, w)` prediction of `window`.
        ref: `(C, h, w)` reference on the same window.
        valid: `(h, w)` both valid.
        window: Where the arrays lie on the prediction's grid.
        side: Tile side in pixels.
    """
    found = []
    for r in range(0, valid.shape[0] - side + 1, side):
        for c in range(0, valid.shape[1] - side + 1, side):
            v = valid[r : r + side, c : c + side]
            if v.mean() < MIN_VALID:
                continue
            err = np.abs(pred[:, r : r + side, c : c + side] - ref[:, r : r + side, c : c + side])
            tile = Window(int(window.col_off) + c, int(window.row_off) + r, side, side)
            found.append((float(err[:, v].mean()), tile))
    return found


def pick(errors: Sequence[TileError]) -> list[tuple[str, TileError]]:
    """The tiles of the largest, the median and the smallest MAE (fewer when fewer exist)."""
    ranked = sorted(errors, key=lambda e: -e[0])
    if not ranked:
        return []
    chosen = {0: "largest error", len(ranked) // 2: "median error", len(ranked) - 1: "smallest"}
    return [(label, ranked[i]) for i, label in sorted(chosen.items())]


def _stretch(data: NDArray[np.floating], lo: float, hi: float) -> NDArray[np.uint8]:
    """`(C, h, w)` → `(h, w, 3)` uint8 between `lo` and `hi` (bands past 3 dropped, one gray)."""
    data = data[:3] if data.shape[0] >= 3 else np.repeat(data[:1], 3, axis=0)
    scaled = (data.astype(np.float64) - lo) / max(hi - lo, 1e-9) * 255
    return np.clip(np.nan_to_num(scaled), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def _limits(*arrays: NDArray[np.floating]) -> tuple[float, float]:
    values = np.concatenate([a[np.isfinite(a)].ravel() for a in arrays])
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [2, 98])
    return float(lo), float(hi)


def _row(
    label: str,
    error: TileError,
    readers: tuple[SceneReader, SceneReader, SceneReader | None],
    white: float,
) -> tuple[str, list[NDArray[np.uint8]]]:
    """One row's caption and panels; an error of `white` or more is drawn white."""
    (mae, window), (pred, ref, src) = error, readers
    p, t = pred.read(window)[0].astype(np.float64), ref.read(window)[0].astype(np.float64)
    lo, hi = _limits(p, t)
    err = np.abs(p - t).mean(0, keepdims=True)
    panels = [_stretch(p, lo, hi), _stretch(t, lo, hi), _stretch(err, 0.0, white)]
    if src is not None:
        s = src.read(window)[0].astype(np.float64)
        panels.insert(0, _stretch(s, *_limits(s)))
    where = f"rows {window.row_off}-{window.row_off + window.height}, cols {window.col_off}-"
    return f"{label}: MAE {mae:.4g} ({where}{window.col_off + window.width})", panels


def write_picture(
    path: str | Path,
    picks: Sequence[tuple[str, TileError]],
    pred: SceneReader,
    ref: SceneReader,
    src: SceneReader | None = None,
) -> None:
    """Draw the picked tiles, one row each, as one PNG at `path` (atomically)."""
    from PIL import Image, ImageDraw

    white = max(2 * max(e[0] for _, e in picks), 1e-9)  # one scale for every row
    rows = [_row(label, error, (pred, ref, src), white) for label, error in picks]
    names = [("source", src), ("prediction", pred), ("target", ref)] if src else [
        ("prediction", pred), ("target", ref)
    ]  # fmt: skip
    titles = [f"{n} ({', '.join(r.band_names[:3])})" for n, r in names] + [
        f"|error| (white: {white:.4g})"
    ]
    side = rows[0][1][0].shape[0]
    scale = max(1, math.ceil(MIN_SIDE / side))
    cell, gap, text = side * scale, 6, 18
    width = len(titles) * (cell + gap) - gap
    canvas = Image.new("RGB", (width, text + len(rows) * (text + cell + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, title in enumerate(titles):
        draw.text((i * (cell + gap) + 2, 3), title, fill="black")
    for r, (caption, panels) in enumerate(rows):
        y = text + r * (text + cell + gap)
        draw.text((2, y + 3), caption, fill="black")
        for i, panel in enumerate(panels):
            big = panel.repeat(scale, axis=0).repeat(scale, axis=1)  # nearest neighbour
            canvas.paste(Image.fromarray(big), (i * (cell + gap), y + text))
    with atomic_path(path, ".png") as tmp:
        canvas.save(tmp, format="PNG")
