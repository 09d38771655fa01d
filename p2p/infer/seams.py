"""Seam score: are the window boundaries of a prediction visible?

A prediction is computed in windows whose centre regions tile the scene (`p2p.infer.windows`);
the layout is stored in the prediction's tags (``P2P_WINDOW_LAYOUT``). Along an axis with more
than one window, the pixel pairs ``(x - 1, x)`` with ``x`` a multiple of the stride straddle a
window boundary; pairs at least ``overlap + 1`` pixels away from every boundary lie inside one
window alone (interior). Per band,

    ratio = mean |difference| across boundaries / mean |difference| at interior pairs

over pairs valid in both pixels, both axes pooled. The same pairs are measured in the target
(warped onto the prediction's grid) when one is given, so natural edges that happen to lie on
a boundary do not count as seams: ``seam = prediction ratio / target ratio``. 1.0 means the
boundaries are indistinguishable from the interior; a visible seam scores above 1. Without a
target the seam is the prediction's ratio alone.

`SeamAccumulator` keeps sums only, so a scene of any size is scored block by block
(`seam_score` reads windows with a one-pixel halo, `update` counts every pair once).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from rasterio.windows import Window

from p2p.infer.provenance import LAYOUT_TAG
from p2p.infer.windows import AxisLayout
from p2p.raster import SceneReader

#: Side of the blocks a raster is read in.
SEAM_WINDOW = 1024


@dataclass(frozen=True)
class AxisSeams:
    """Where the boundaries of one axis lie.

    Attributes:
        stride: Length of a window's centre region, in pixels.
        overlap: Context pixels a window shares with each neighbour.
        origin: Scene position of the first boundary-free window start (0 for p2p predictions).
        count: Windows along the axis (1: no boundary).
    """

    stride: int
    overlap: int
    origin: int
    count: int

    def classify(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which difference positions ``x`` (pairs ``(x - 1, x)``) straddle a boundary and
        which lie in a window's interior: two bool arrays shaped like `positions`."""
        if self.count < 2:
            none = np.zeros(positions.shape, dtype=bool)
            return none, none
        rel = positions - self.origin
        m = np.mod(rel, self.stride)
        inside = (rel > 0) & (rel < self.count * self.stride)
        boundary = inside & (m == 0)
        lo, hi = self.overlap + 1, self.stride - self.overlap - 1
        if lo > hi:  # every pixel is shared by two windows: use the pairs farthest from seams
            lo = hi = self.stride // 2
        interior = inside & (m >= lo) & (m <= hi)
        return boundary, interior


@dataclass(frozen=True)
class WindowLayout:
    """A prediction's window layout: rows then columns."""

    rows: AxisSeams
    cols: AxisSeams
    blend: str

    @classmethod
    def from_tag(cls, text: str) -> WindowLayout:
        """Parse the ``P2P_WINDOW_LAYOUT`` tag (JSON of ``[rows, columns]`` pairs)."""
        d = json.loads(text)
        axes = [
            AxisSeams(int(d["stride"][i]), int(d["overlap"][i]), int(d["origin"][i]), int(n))
            for i, n in enumerate(d["count"])
        ]
        return cls(axes[0], axes[1], str(d.get("blend", "")))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: per axis stride, overlap, origin, count, and the blend."""
        return {
            "stride": [self.rows.stride, self.cols.stride],
            "overlap": [self.rows.overlap, self.cols.overlap],
            "origin": [self.rows.origin, self.cols.origin],
            "count": [self.rows.count, self.cols.count],
            "blend": self.blend,
        }


def layout_of(rows: AxisLayout, cols: AxisLayout) -> WindowLayout:
    """The layout of the engine's windows along rows and columns (`p2p.infer.windows`)."""

    def axis(a: AxisLayout) -> AxisSeams:
        return AxisSeams(a.stride, a.overlap, 0, a.count)

    return WindowLayout(axis(rows), axis(cols), cols.blend)


def read_layout(reader: SceneReader) -> WindowLayout | None:
    """The layout in a prediction's tags, None when it has none (a mosaic of several scenes,
    a raster p2p did not write)."""
    text = reader.tags().get(LAYOUT_TAG)
    return WindowLayout.from_tag(text) if text else None


class _Sums:
    """Per-band sums of |difference| and pair counts at boundary and interior pairs."""

    def __init__(self, bands: int) -> None:
        self.abs = np.zeros((2, bands))  # boundary, interior
        self.count = np.zeros(2)

    def add(
        self, diff: np.ndarray, ok: np.ndarray, boundary: np.ndarray, interior: np.ndarray
    ) -> None:
        """`diff` `(C, ...)`, masks shaped like ``diff[0]``."""
        for i, where in enumerate((boundary & ok, interior & ok)):
            if where.any():
                self.abs[i] += np.abs(diff[:, where]).sum(axis=1)
                self.count[i] += int(where.sum())

    def ratios(self) -> list[float | None]:
        """Per band: mean boundary |diff| / mean interior |diff| (None without pairs)."""
        if not self.count.all():
            return [None] * self.abs.shape[1]
        means = self.abs / self.count[:, None]
        return [float(b / i) if i > 0 else None for b, i in zip(means[0], means[1], strict=True)]

    def means(self) -> tuple[list[float | None], list[float | None]]:
        """Per band mean |diff| at boundary and at interior pairs."""
        out: list[list[float | None]] = []
        for i in range(2):
            n = self.count[i]
            out.append([float(v / n) if n else None for v in self.abs[i]])
        return out[0], out[1]


class SeamAccumulator:
    """Streams the seam score over blocks of a prediction (and its target).

    Args:
        layout: The prediction's window layout.
        bands: Bands of the prediction.
    """

    def __init__(self, layout: WindowLayout, bands: int) -> None:
        self.layout = layout
        self.pred = _Sums(bands)
        self.target = _Sums(bands)

    def merge(self, other: SeamAccumulator) -> None:
        """Add another accumulator's sums (e.g. another scene's, laid out alike)."""
        for mine, theirs in ((self.pred, other.pred), (self.target, other.target)):
            mine.abs += theirs.abs
            mine.count += theirs.count

    def update(
        self,
        row0: int,
        col0: int,
        pred: np.ndarray,
        valid: np.ndarray,
        target: np.ndarray | None = None,
        halo_top: bool = False,
        halo_left: bool = False,
    ) -> None:
        """Add the pixel pairs of one block at scene position `(row0, col0)`.

        Args:
            pred: `(C, h, w)` prediction values.
            valid: `(h, w)` bool, pixels that count (valid in the prediction, and in the
                target when one is given).
            target: `(C, h, w)` target on the same pixels, or None.
            halo_top: The block's first row was already counted by the block above: it serves
                only as the upper partner of vertical pairs.
            halo_left: Likewise for the first column and horizontal pairs.
        """
        h, w = valid.shape
        skip_r, skip_c = int(halo_top), int(halo_left)
        if w > 1 and h > skip_r:  # horizontal pairs: columns x - 1, x
            b, i = self.layout.cols.classify(np.arange(col0 + 1, col0 + w))
            ok = valid[skip_r:, 1:] & valid[skip_r:, :-1]
            self._add(pred, target, np.s_[:, skip_r:, :], 2, ok, b[None, :], i[None, :])
        if h > 1 and w > skip_c:  # vertical pairs: rows y - 1, y
            b, i = self.layout.rows.classify(np.arange(row0 + 1, row0 + h))
            ok = valid[1:, skip_c:] & valid[:-1, skip_c:]
            self._add(pred, target, np.s_[:, :, skip_c:], 1, ok, b[:, None], i[:, None])

    def _add(
        self,
        pred: np.ndarray,
        target: np.ndarray | None,
        part: Any,
        axis: int,
        ok: np.ndarray,
        boundary: np.ndarray,
        interior: np.ndarray,
    ) -> None:
        shape = ok.shape
        boundary, interior = np.broadcast_to(boundary, shape), np.broadcast_to(interior, shape)
        self.pred.add(np.diff(pred[part].astype(np.float64), axis=axis), ok, boundary, interior)
        if target is not None:
            diff = np.diff(target[part].astype(np.float64), axis=axis)
            self.target.add(diff, ok, boundary, interior)

    def compute(self, names: list[str] | None = None) -> dict[str, Any]:
        """The seam score.

        Returns:
            ``{"seam": mean of the bands' seams, "bands": [{"name", "seam", "prediction_ratio",
            "target_ratio", "boundary", "interior"}], "pairs": {"boundary", "interior"},
            "layout"}``; ``seam`` is prediction ratio / target ratio with a target, else the
            prediction ratio; None where no pair (or a zero interior gradient) gives one.
        """
        pred, target = self.pred.ratios(), self.target.ratios()
        has_target = bool(self.target.count.any())
        boundary, interior = self.pred.means()
        bands: list[dict[str, Any]] = []
        seams: list[float] = []
        for k, p in enumerate(pred):
            t = target[k] if has_target else None
            seam = p if not has_target else (p / t if p is not None and t else None)
            if seam is not None:
                seams.append(seam)
            bands.append(
                {
                    "name": names[k] if names else f"band {k + 1}",
                    "seam": seam,
                    "prediction_ratio": p,
                    "target_ratio": t,
                    "boundary": boundary[k],
                    "interior": interior[k],
                }
            )
        return {
            "seam": sum(seams) / len(seams) if seams else None,
            "bands": bands,
            "pairs": {"boundary": int(self.pred.count[0]), "interior": int(self.pred.count[1])},
            "layout": self.layout.to_dict(),
        }


def _halo_windows(height: int, width: int, side: int) -> Iterator[tuple[Window, bool, bool]]:
    """Blocks of `side` with one extra row above and column left (where there is one)."""
    for row in range(0, height, side):
        for col in range(0, width, side):
            top, left = max(row - 1, 0), max(col - 1, 0)
            h, w = min(side, height - row) + row - top, min(side, width - col) + col - left
            yield Window(left, top, w, h), row > 0, col > 0


def seam_score(
    pred: SceneReader,
    target: SceneReader | None = None,
    layout: WindowLayout | None = None,
    side: int = SEAM_WINDOW,
) -> dict[str, Any] | None:
    """The seam score of a prediction, block by block (memory: one block).

    Args:
        pred: The prediction.
        target: The reference on the prediction's grid (`open_aligned`), or None.
        layout: The window layout; by default the one in the prediction's tags.
        side: Block side in pixels.

    Returns:
        `SeamAccumulator.compute()`, or None when the prediction has no layout.
    """
    layout = layout or read_layout(pred)
    if layout is None:
        return None
    acc = SeamAccumulator(layout, pred.count)
    for window, top, left in _halo_windows(pred.grid.height, pred.grid.width, side):
        p, valid = pred.read(window)
        t = None
        if target is not None:
            t, t_valid = target.read(window)
            valid = valid & t_valid
        acc.update(int(window.row_off), int(window.col_off), p, valid, t, top, left)
    return acc.compute(pred.band_names)
