"""The strip loop of prediction: windows row by row, blended into strips, written in order.

Window row j is read and run a few batches at a time (`READ_COLUMNS` scene columns), blended
across columns, and each run of finished columns is added with the vertical blend weights into
the strips (centre regions of window rows) it overlaps: besides the strips in flight, a window
row holds only the columns of one read. A strip is complete once the
window rows below it that reach into it are done; it is then denormalized, cast to the target
dtype and handed to a `RowSink`. The loop's state (`StripLoop`) is committed with the rows
after every window row that completes a strip, so a killed run resumes there exactly.

The loop is a pipeline of three threads (`p2p.infer.pipeline`): a reader decodes and prepares
the next reads while the model runs, and a writer encodes, writes and commits the finished
(already cast) strips behind it; queues are bounded and the order of every sum and commit is
the sequential loop's, so the bytes and the commits are too. Its arrays live where the model runs
(`p2p.infer.backends`: numpy on the CPU, tensors on the GPU).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from rasterio.windows import Window

from p2p.bands.normalization import BandStats, denormalize
from p2p.infer.pipeline import Prefetch, Writer
from p2p.infer.windows import AxisLayout, add_weighted, reflect_index
from p2p.raster import SceneReader, geotiff
from p2p.raster.partial import RowSink

if TYPE_CHECKING:
    from p2p.infer.backends import Array, Windows

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


@dataclass(frozen=True)
class _Run:
    """One run of the strip loop: the model and arrays (`Windows`), the plan, and both axes'
    blend weights as float32 tables where the loop's arrays live."""

    windows: Windows
    plan: StripPlan
    wy: Array
    wx: Array

    @classmethod
    def of(cls, windows: Windows, plan: StripPlan) -> _Run:
        wy, wx = (windows.array(a.weights.astype(np.float32)) for a in (plan.ly, plan.lx))
        return cls(windows, plan, wy, wx)


#: What the reader hands over per read: (staged input, valid `(h, w)` bool, top, left).
Read = tuple[Any, np.ndarray, int, int]


def _reads_of_row(plan: StripPlan) -> list[range]:
    """The windows of a row read at once, left to right (the same for every row)."""
    per_read = windows_per_read(plan.lx.stride, plan.batch_size)
    return [range(k, min(k + per_read, plan.lx.count)) for k in range(0, plan.lx.count, per_read)]


#: Rows of one read that the next window row reads again, per read of a row: (first scene
#: row, raw values, valid), the bottom ``tile - stride`` rows (`_read_rows`).
Carry = dict[int, tuple[int, np.ndarray, np.ndarray]]


def _read_rows(
    reader: SceneReader, window: Window, carry: Carry, n: int, keep: int
) -> tuple[np.ndarray, np.ndarray]:
    """`reader.read(window)`, taking the rows that read `n` of the previous window row already
    read from `carry` (only the rows below them come from the file), and keeping the bottom
    `keep` rows for the next. Pixels are the same as one read: values and validity are per
    pixel, and a resampled (warped) reader always reads whole (GDAL's warper may chunk
    differently)."""
    top, height = int(window.row_off), int(window.height)
    kept = carry.pop(n, None)
    if kept is not None and not reader.resampled and kept[0] == top and len(kept[2]) < height:
        _, old, old_valid = kept
        rest = Window(window.col_off, top + len(old_valid), window.width, height - len(old_valid))
        new, new_valid = reader.read(rest)
        data, valid = np.concatenate([old, new], axis=1), np.concatenate([old_valid, new_valid])
    else:
        data, valid = reader.read(window)
    if 0 < keep < height:
        carry[n] = (top + height - keep, data[:, -keep:].copy(), valid[-keep:].copy())
    return data, valid


def _read_windows(
    reader: SceneReader, windows: Windows, plan: StripPlan, j: int, ks: range, carry: Carry
) -> Read:
    """Model input for windows `ks` of window row j: their pixels, parts outside the scene
    mirrored about the edge (reflection), staged by `windows` (numpy: prepared as training
    chips are, `prepare_window`; `Windows.rows` finishes it on the model's thread).

    Window rows overlap by ``tile - stride`` rows: inside the scene those rows come from the
    previous row's read (`carry`, keyed by the read's place in the row), not from the file.

    Returns:
        staged: becomes `(C_in, tile_y, (len(ks) - 1)·stride_x + tile_x)` float32 in [-1, 1];
            window k starts at column `(k - ks.start)·stride_x`.
        valid: `(h, w)` bool for the scene pixels read, whose top-left is (`top`, `left`).
        top, left: Scene row and column of `valid[0, 0]`.
    """
    ly, lx = plan.ly, plan.lx
    ys = reflect_index(np.arange(ly.start(j), ly.start(j) + ly.tile), ly.size)
    xs = reflect_index(np.arange(lx.start(ks.start), lx.start(ks[-1]) + lx.tile), lx.size)
    top, left = int(ys.min()), int(xs.min())
    window = Window(left, top, int(xs.max()) + 1 - left, int(ys.max()) + 1 - top)
    plain = int(ys[0]) == top and len(ys) == window.height  # rows in order, none mirrored
    keep = ly.tile - ly.stride if plain else 0
    data, valid = _read_rows(reader, window, carry if plain else {}, ks.start, keep)
    return windows.stage(data, valid, ys - top, xs - left), valid, top, left


def _reads(reader: SceneReader, run: _Run, rows: range) -> Iterator[Read]:
    """Every read of window rows `rows`, in the order the loop consumes them."""
    carry: Carry = {}
    for j in rows:
        for ks in _reads_of_row(run.plan):
            yield _read_windows(reader, run.windows, run.plan, j, ks, carry)


def _predict_window_row(
    reads: Iterator[Read],
    run: _Run,
    j: int,
    add: Callable[[int, Array], None],
) -> np.ndarray:
    """Run the windows of row j and blend them across columns, handing each run of finished
    columns, left to right, to `add(first column, values)`.

    The windows come a few batches at a time (`READ_COLUMNS`, from `reads`); after each read
    the columns no later window reaches are finished and handed on, and only the columns the
    next read still adds to are kept: what the row holds does not grow with the scene's width.
    Each column sums the same windows in the same order as a whole row at once would.

    Args:
        add: Called with the first scene column and `(C_out, tile_y, n)` float32 values,
            normalized units, horizontally blended (a view, valid during the call).

    Returns:
        `(b - a, width)` bool, valid pixels of scene rows `[a, b) = centre(j)`.
    """
    windows, plan = run.windows, run.plan
    lx, (a, b) = plan.lx, plan.ly.centre(j)
    row_valid = np.zeros((b - a, lx.size), dtype=bool)
    base, kept = 0, None  # columns [base, ...) that the next read still adds to
    for ks in _reads_of_row(plan):
        staged, valid, top, left = next(reads)
        rows = windows.rows(staged)
        c0, c1 = lx.centre(ks.start)[0], lx.centre(ks[-1])[1]
        row_valid[:, c0:c1] = valid[a - top : b - top, c0 - left : c1 - left]
        end = min(lx.size, lx.start(ks[-1]) + lx.tile)  # the last column these windows reach
        out: Array = None
        for b0 in range(ks.start, ks.stop, plan.batch_size):
            batch_ks = range(b0, min(b0 + plan.batch_size, ks.stop))
            cols = [(k - ks.start) * lx.stride for k in batch_ks]
            y = windows(windows.stack([rows[:, :, c : c + lx.tile] for c in cols]))
            if out is None:
                out = windows.zeros((y.shape[1], y.shape[2], end - base))
                if kept is not None:
                    out[:, :, : kept.shape[2]] = kept
            for n, k in enumerate(batch_ks):
                s = lx.start(k)
                lo, hi = max(0, -s), min(lx.tile, lx.size - s)
                u0, u1 = lx.unit_runs[k]
                dst = out[:, :, s + lo - base : s + hi - base]
                add_weighted(dst, y[n, :, :, lo:hi], run.wx[k, lo:hi], (u0 - lo, u1 - lo), 2)
        done = lx.size if ks.stop == lx.count else max(base, lx.start(ks.stop))
        add(base, out[:, :, : done - base])
        base, kept = done, out[:, :, done - base :]
    return row_valid


@dataclass
class StripLoop:
    """Where the strip loop stands: the next window row to compute, the next strip to emit,
    and the strips in flight (`acc` `(C_out, h, width)` float32 normalized, the top h rows of
    the strip reached so far, where the loop's arrays live; `valid` `(rows, width)` bool by
    strip, on the host). Saved with every commit, so a killed run resumes exactly here."""

    window: int
    strip: int
    acc: dict[int, Array] = field(default_factory=dict)
    valid: dict[int, np.ndarray] = field(default_factory=dict)

    def marks(self) -> dict[str, int]:
        return {"window": self.window, "strip": self.strip}

    def arrays(self) -> dict[str, Array]:
        return {f"acc_{r}": a for r, a in self.acc.items()} | {
            f"valid_{r}": v for r, v in self.valid.items()
        }

    @classmethod
    def restore(cls, marks: dict[str, int], arrays: dict[str, np.ndarray]) -> StripLoop:
        def strips(prefix: str) -> dict[int, np.ndarray]:
            return {int(k[len(prefix) :]): a for k, a in arrays.items() if k.startswith(prefix)}

        return cls(marks["window"], marks["strip"], strips("acc_"), strips("valid_"))


#: Reads prepared ahead of the model, and scale of the writer's queue (`p2p.infer.pipeline`);
#: 0 runs the loop sequentially on one thread (the reference the threaded run must match).
PIPELINE_DEPTH = 2

#: `commit(marks, arrays)`: the loop's counters and its carry (host arrays), to resume from.
Commit = Callable[[dict[str, int], dict[str, np.ndarray]], None]

#: `emit(index, acc, valid)`, on the model's thread, turns a complete strip (host arrays) into
#: what it writes and returns the writing, run on the writer thread. Scene-wide buffers are
#: made on the model's thread: glibc gives each thread a malloc arena of its own, and buffers
#: freed in two arenas would each keep their peak (peak memory grew ~3 points more from 1x to
#: 16x the area when the writer thread cast the strips).
Emit = Callable[[int, np.ndarray, np.ndarray], Callable[[], None]]


def compute_strips(
    reader: SceneReader,
    windows: Windows,
    plan: StripPlan,
    loop: StripLoop,
    emit: Emit,
    commit: Commit,
    stop: int | None = None,
) -> None:
    """Compute window rows from `loop.window` on, passing each strip, once complete, to
    `emit(index, acc, valid)` (host arrays; what it returns runs on the writer thread), and its
    state to `commit` after each window row that completed one; with `stop`, only until strip
    `stop - 1` is emitted. A strip's pixels do not depend on where the run starts or stops.

    Reading runs ahead on a reader thread and the writing and `commit` behind on a writer thread
    (`PIPELINE_DEPTH`), in the sequential loop's order and with its sums: the same calls with
    the same values. A commit saves a copy of the loop's state taken when its row completes
    (the partial strips, a few rows each), so the model never waits for a commit to be written,
    only for room in the writer's queue (it waited 2.5 s of a 10 s 12288² run before).
    """
    ly = plan.ly
    last = ly.count if stop is None else ly.covering(*ly.centre(stop - 1)).stop
    run = _Run.of(windows, plan)
    for key, acc in loop.acc.items():  # a restored carry: onto the device
        loop.acc[key] = windows.array(acc)
    depth = PIPELINE_DEPTH
    with (
        Prefetch(_reads(reader, run, range(loop.window, last)), depth) as reads,
        Writer(depth) as writer,
    ):
        for j in range(loop.window, last):
            add = partial(_add_to_strips, run, loop, j)
            row_valid = _predict_window_row(reads, run, j, add)
            if j >= loop.strip:
                loop.valid[j] = row_valid
            done = [r for r in sorted(loop.acc) if ly.covering(*ly.centre(r)).stop - 1 <= j]
            for r in done:
                acc, valid = windows.host(loop.acc.pop(r)), loop.valid.pop(r)
                writer.submit(emit(r, acc, valid))
                loop.strip = r + 1
            loop.window = j + 1
            if done:  # a copy: the model adds into the accumulators while the writer saves them
                state = {key: np.array(windows.host(a)) for key, a in loop.arrays().items()}
                writer.submit(partial(commit, loop.marks(), state))


def _add_to_strips(run: _Run, loop: StripLoop, j: int, c0: int, out: Array) -> None:
    """Add finished columns `[c0, c0 + n)` of window row j (`(C_out, tile_y, n)`) into the
    strips it overlaps, with the vertical blend weights."""
    ly, c1, s = run.plan.ly, c0 + out.shape[2], run.plan.ly.start(j)
    for r in _strips_of_window(ly, j):
        if r < loop.strip:
            continue
        a, b = ly.centre(r)
        lo, hi = max(a, s), min(b, s + ly.tile)
        strip = loop.acc.get(r)
        if strip is None or strip.shape[1] < hi - a:
            # a strip holds the rows reached so far (the window row above reaches only its
            # top `overlap` rows), so one strip fewer is held in full at a time
            grown = run.windows.zeros((out.shape[0], hi - a, run.plan.lx.size))
            if strip is not None:
                grown[:, : strip.shape[1]] = strip
            loop.acc[r] = strip = grown
        w = run.wy[j, lo - s : hi - s, None]  # `(rows, 1)`: broadcast along the columns
        u0, u1 = ly.unit_runs[j]
        dst = strip[:, lo - a : hi - a, c0:c1]
        add_weighted(dst, out[:, lo - s : hi - s], w, (u0 - (lo - s), u1 - (lo - s)), 1)


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


def spread_values(plan: StripPlan, acc: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """A blended strip of test-time spread as written: `(C_out, h, width)` float32 in the
    target's units (the normalized spread scaled by half each band's span), NaN where the
    source was invalid."""
    half = np.asarray(plan.target_stats.spans(), dtype=np.float32)[:, None, None] / 2
    return np.where(valid[None], acc * half, np.float32(np.nan)).astype(np.float32)


def write_strips(
    reader: SceneReader,
    windows: Windows,
    plan: StripPlan,
    sinks: Sequence[RowSink],
    progress: Progress | None,
) -> None:
    """Compute and write the strips from where an earlier run committed: its carry when every
    sink committed the same one, else the strip holding the first row a sink lacks.

    Args:
        sinks: The prediction's; with a second one, the model's outputs carry as many spread
            channels after the prediction's (`DihedralMean(spread=True)`), written there.
    """
    ly, marks = plan.ly, sinks[0].marks
    if marks and all(s.marks == marks for s in sinks):
        loop = StripLoop.restore(marks, sinks[0].carry)
    else:  # rows a sink took already are skipped when they come again (`RowSink.add`)
        first = min(min(s.rows_done for s in sinks) // ly.stride, ly.count)
        loop = StripLoop(
            ly.covering(*ly.centre(first)).start if first < ly.count else ly.count, first
        )
    if progress:
        progress(loop.strip, ly.count)

    def emit(r: int, acc: np.ndarray, valid: np.ndarray) -> Callable[[], None]:
        row, bands = ly.centre(r)[0], acc.shape[0] // len(sinks)
        layers = [strip_values(plan, acc[:bands], valid)]
        layers += [spread_values(plan, acc[bands:], valid) for _ in sinks[1:]]

        def write() -> None:
            for sink, values in zip(sinks, layers, strict=True):
                sink.add(row, values)
            if progress:
                progress(r + 1, ly.count)

        return write

    def commit(marks: dict[str, int], arrays: dict[str, np.ndarray]) -> None:
        sinks[0].commit(marks, arrays)
        for sink in sinks[1:]:  # its rows short of a block row: resumed only if marks agree
            sink.commit(marks, {})

    compute_strips(reader, windows, plan, loop, emit, commit)
