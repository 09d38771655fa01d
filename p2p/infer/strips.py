"""The strip loop of prediction: windows row by row, blended into strips, written in order.

Window row j is read and run a few batches at a time (`READ_COLUMNS` scene columns), blended
across columns, and each run of finished columns is added with the vertical blend weights into
the strips (centre regions of window rows) it overlaps: besides the strips in flight, a window
row holds only the columns of one read. A strip is complete once the
window rows below it that reach into it are done; it is then denormalized, cast to the target
dtype and handed to a `RowSink`. The loop's state (`StripLoop`) is committed with the rows
after every window row that completes a strip, so a killed run resumes there exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from rasterio.windows import Window

from p2p.infer.windows import AxisLayout, reflect_index
from p2p.model.normalization import BandStats, denormalize, prepare_window
from p2p.raster import SceneReader, geotiff
from p2p.raster.partial import RowSink

if TYPE_CHECKING:
    from p2p.infer.translator import WindowModel

Progress = Callable[[int, int], None]

#: Scene columns read, prepared and cast at once (rounded to whole batches of windows).
READ_COLUMNS = 1024


def windows_per_read(stride: int, batch_size: int) -> int:
    """Windows of a row read at once: whole batches spanning about `READ_COLUMNS` columns."""
    return batch_size * max(1, READ_COLUMNS // (batch_size * stride))


@dataclass(frozen=True)
class StripPlan:
    """Everything the strip loop needs that does not change during a run."""

    ly: AxisLayout
    lx: AxisLayout
    source_stats: BandStats
    target_stats: BandStats
    dtype: str
    nodata: float
    batch_size: int


def _read_windows(
    reader: SceneReader, plan: StripPlan, j: int, ks: range
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Model input for windows `ks` of window row j: their pixels, parts outside the scene
    mirrored about the edge (reflection), prepared as training chips are (`prepare_window`).

    Returns:
        rows: `(C_in, tile_y, (len(ks) - 1)·stride_x + tile_x)` float32 in [-1, 1]; window k
            starts at column `(k - ks.start)·stride_x`.
        valid: `(h, w)` bool for the scene pixels read, whose top-left is (`top`, `left`).
        top, left: Scene row and column of `valid[0, 0]`.
    """
    ly, lx = plan.ly, plan.lx
    ys = reflect_index(np.arange(ly.start(j), ly.start(j) + ly.tile), ly.size)
    xs = reflect_index(np.arange(lx.start(ks.start), lx.start(ks[-1]) + lx.tile), lx.size)
    top, left = int(ys.min()), int(xs.min())
    window = Window(left, top, int(xs.max()) + 1 - left, int(ys.max()) + 1 - top)
    data, valid = reader.read(window)
    x = prepare_window(data, valid, plan.source_stats)
    return x[:, (ys - top)[:, None], xs - left], valid, top, left  # one gather, one copy


def _predict_window_row(
    reader: SceneReader,
    model: WindowModel,
    plan: StripPlan,
    j: int,
    add: Callable[[int, np.ndarray], None],
) -> np.ndarray:
    """Run the windows of row j and blend them across columns, handing each run of finished
    columns, left to right, to `add(first column, values)`.

    The windows are read a few batches at a time (`READ_COLUMNS`); after each read the columns
    no later window reaches are finished and handed on, and only the columns the next read
    still adds to are kept: what the row holds does not grow with the scene's width. Each
    column sums the same windows in the same order as a whole row at once would.

    Args:
        add: Called with the first scene column and `(C_out, tile_y, n)` float32 values,
            normalized units, horizontally blended (a view, valid during the call).

    Returns:
        `(b - a, width)` bool, valid pixels of scene rows `[a, b) = centre(j)`.
    """
    lx, (a, b) = plan.lx, plan.ly.centre(j)
    per_read = windows_per_read(lx.stride, plan.batch_size)
    row_valid = np.zeros((b - a, lx.size), dtype=bool)
    base, kept = 0, None  # columns [base, ...) that the next read still adds to
    for k0 in range(0, lx.count, per_read):
        ks = range(k0, min(k0 + per_read, lx.count))
        rows, valid, top, left = _read_windows(reader, plan, j, ks)
        c0, c1 = lx.centre(ks.start)[0], lx.centre(ks[-1])[1]
        row_valid[:, c0:c1] = valid[a - top : b - top, c0 - left : c1 - left]
        end = min(lx.size, lx.start(ks[-1]) + lx.tile)  # the last column these windows reach
        out: np.ndarray | None = None
        for b0 in range(ks.start, ks.stop, plan.batch_size):
            batch_ks = range(b0, min(b0 + plan.batch_size, ks.stop))
            cols = [(k - k0) * lx.stride for k in batch_ks]
            y = model(np.stack([rows[:, :, c : c + lx.tile] for c in cols]))
            if out is None:
                out = np.zeros((y.shape[1], y.shape[2], end - base), dtype=np.float32)
                if kept is not None:
                    out[:, :, : kept.shape[2]] = kept
            for n, k in enumerate(batch_ks):
                s = lx.start(k)
                lo, hi = max(0, -s), min(lx.tile, lx.size - s)
                w = lx.weights[k, lo:hi].astype(np.float32)
                out[:, :, s + lo - base : s + hi - base] += y[n, :, :, lo:hi] * w
        assert out is not None
        done = lx.size if ks.stop == lx.count else max(base, lx.start(ks.stop))
        add(base, out[:, :, : done - base])
        base, kept = done, out[:, :, done - base :]
    return row_valid


@dataclass
class StripLoop:
    """Where the strip loop stands: the next window row to compute, the next strip to emit,
    and the strips in flight (`acc` `(C_out, h, width)` float32 normalized, the top h rows of
    the strip reached so far; `valid` `(rows, width)` bool by strip). Saved with every commit, so
    a killed run resumes exactly here."""

    window: int
    strip: int
    acc: dict[int, np.ndarray] = field(default_factory=dict)
    valid: dict[int, np.ndarray] = field(default_factory=dict)

    def marks(self) -> dict[str, int]:
        return {"window": self.window, "strip": self.strip}

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"acc_{r}": a for r, a in self.acc.items()} | {
            f"valid_{r}": v for r, v in self.valid.items()
        }

    @classmethod
    def restore(cls, marks: dict[str, int], arrays: dict[str, np.ndarray]) -> StripLoop:
        def strips(prefix: str) -> dict[int, np.ndarray]:
            return {int(k[len(prefix) :]): a for k, a in arrays.items() if k.startswith(prefix)}

        return cls(marks["window"], marks["strip"], strips("acc_"), strips("valid_"))


def compute_strips(
    reader: SceneReader,
    model: WindowModel,
    plan: StripPlan,
    loop: StripLoop,
    emit: Callable[[int, np.ndarray, np.ndarray], None],
    commit: Callable[[StripLoop], None],
    stop: int | None = None,
) -> None:
    """Compute window rows from `loop.window` on, passing each strip, once complete, to
    `emit(index, acc, valid)`, and `commit(loop)` after each window row that completed one;
    with `stop`, only until strip `stop - 1` is emitted. A strip's pixels do not depend on
    where the run starts or stops."""
    ly = plan.ly
    last = ly.count if stop is None else ly.covering(*ly.centre(stop - 1)).stop
    for j in range(loop.window, last):
        s = ly.start(j)

        def add(c0: int, out: np.ndarray, j: int = j, s: int = s) -> None:
            """Add finished columns of window row j into the strips it overlaps."""
            c1 = c0 + out.shape[2]
            for r in _strips_of_window(ly, j):
                if r < loop.strip:
                    continue
                a, b = ly.centre(r)
                lo, hi = max(a, s), min(b, s + ly.tile)
                w = ly.weights[j, lo - s : hi - s].astype(np.float32)[None, :, None]
                strip = loop.acc.get(r)
                if strip is None or strip.shape[1] < hi - a:
                    # a strip holds the rows reached so far (the window row above reaches only
                    # its top `overlap` rows), so one strip fewer is held in full at a time
                    grown = np.zeros((out.shape[0], hi - a, plan.lx.size), np.float32)
                    if strip is not None:
                        grown[:, : strip.shape[1]] = strip
                    loop.acc[r] = strip = grown
                strip[:, lo - a : hi - a, c0:c1] += out[:, lo - s : hi - s] * w

        row_valid = _predict_window_row(reader, model, plan, j, add)
        if j >= loop.strip:
            loop.valid[j] = row_valid
        done = [r for r in sorted(loop.acc) if ly.covering(*ly.centre(r)).stop - 1 <= j]
        for r in done:
            emit(r, loop.acc.pop(r), loop.valid.pop(r))
            loop.strip = r + 1
        loop.window = j + 1
        if done:
            commit(loop)


def strip_values(plan: StripPlan, acc: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """A blended strip as written: `(C_out, h, width)` in the target's units and dtype, nodata
    where the source was invalid (elementwise, in bands of `READ_COLUMNS` columns)."""
    strip = np.empty(acc.shape, dtype=plan.dtype)
    for c in range(0, acc.shape[2], READ_COLUMNS):
        values = denormalize(acc[:, :, c : c + READ_COLUMNS], plan.target_stats, band_axis=0)
        cast = geotiff.to_dtype(values, valid[:, c : c + READ_COLUMNS], plan.dtype, plan.nodata)
        strip[:, :, c : c + READ_COLUMNS] = cast
    return strip


def _strips_of_window(ly: AxisLayout, j: int) -> range:
    """Strips (centre regions) that window row j overlaps."""
    s = ly.start(j)
    return range(max(0, s // ly.stride), min(ly.count, (s + ly.tile - 1) // ly.stride + 1))


def write_strips(
    reader: SceneReader,
    model: WindowModel,
    plan: StripPlan,
    sink: RowSink,
    progress: Progress | None,
) -> None:
    """Compute and write the strips from where an earlier run committed: its carry when it
    left one, else the strip holding the first unwritten row."""
    if sink.marks:
        loop = StripLoop.restore(sink.marks, sink.carry)
    else:
        ly = plan.ly
        first = min(sink.rows_done // ly.stride, ly.count)
        loop = StripLoop(
            ly.covering(*ly.centre(first)).start if first < ly.count else ly.count, first
        )
    if progress:
        progress(loop.strip, plan.ly.count)

    def emit(r: int, acc: np.ndarray, valid: np.ndarray) -> None:
        sink.add(plan.ly.centre(r)[0], strip_values(plan, acc, valid))
        if progress:
            progress(r + 1, plan.ly.count)

    compute_strips(
        reader, model, plan, loop, emit, lambda done: sink.commit(done.marks(), done.arrays())
    )
