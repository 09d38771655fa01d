"""Resumable outputs: a partial GeoTIFF written in block rows, and the record of its progress.

An output NAME is written at ``.NAME.partial.tif`` beside it. Each `RowSink.commit` records,
atomically, the rows on disk in ``.NAME.state.json``, and may add the writer's *carry*: the
arrays it needs to go on from where it stands without recomputing anything (for prediction,
the blend accumulators of the strips in flight), saved with the rows that do not fill a block
row yet in ``.NAME.carry.N.npy`` (``.npy`` records one after another; N counts commits, so a
state never names a half-written carry). A rerun of the same job (same fingerprint) continues
from the last commit; whatever a different job left is discarded. `RowSink.write_whole` writes
the partial file in one go instead (a copy), recorded only once complete. `RowSink.publish`
renames or assembles the finished file.
"""

from __future__ import annotations

import contextlib
import glob
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from p2p.core.fsutil import atomic_path, atomic_write_json, read_json
from p2p.raster import geotiff


def partial_paths(output: Path) -> tuple[Path, Path]:
    """The partial file and the state file of an output being written."""
    return (
        output.with_name(f".{output.name}.partial.tif"),
        output.with_name(f".{output.name}.state.json"),
    )


def _write_npy(f: BinaryIO, array: np.ndarray) -> None:
    """One ``.npy`` record, written from the array's memory (no copy when contiguous) through
    Python's file object, so a full disk raises OSError with its errno (numpy's ``tofile``
    reports a short write without one)."""
    array = np.ascontiguousarray(array)
    np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(array))
    f.write(array.data)


class RowSink:
    """Collects finished rows and writes them to the partial file one block row at a time.

    Attributes:
        partial: The partial GeoTIFF (the caller creates it unless `resumed`).
        rows_done: Rows on disk.
        resumed: True when an earlier run of the same job left progress to continue.
        marks: The caller's counters saved with the last carry (empty without one).
        carry: The caller's arrays saved with the last carry (empty without one).

    Args:
        output: The final output; the partial, state and carry files sit beside it.
        job: Fingerprint of the run; progress left by another job is discarded.
        height: Rows of the output.
    """

    def __init__(self, output: Path, job: str, height: int) -> None:
        self.output, self.job, self.height = output, job, height
        self.partial, self.state = partial_paths(output)
        self.rows_done, self.resumed, self._commits = 0, False, 0
        self.marks: dict[str, int] = {}
        self.carry: dict[str, np.ndarray] = {}
        self._block: np.ndarray | None = None  # the block row being filled, `(C, BLOCK, W)`
        self._pending_rows = 0  # rows of `_block` taken so far
        self._load()

    def _carry_files(self) -> list[Path]:
        return sorted(self.output.parent.glob(f".{glob.escape(self.output.name)}.carry.*.npy"))

    def _load(self) -> None:
        record: dict[str, Any] = {}
        if self.partial.is_file() and self.state.is_file():
            with contextlib.suppress(ValueError, OSError):
                record = read_json(self.state)
        named = None
        if record.get("job") == self.job:
            self.rows_done, self.resumed = int(record["rows_done"]), True
            self._commits = int(record.get("commits", 0))
            named = self._load_carry(record)
        else:
            self.partial.unlink(missing_ok=True)
            self.state.unlink(missing_ok=True)
        for stale in self._carry_files():
            if stale.name != named:
                stale.unlink()

    def _load_carry(self, record: dict[str, Any]) -> str | None:
        """Restore the carry the state names; None when it has none (or it cannot be read,
        then the caller restarts from `rows_done`)."""
        name = record.get("carry")
        if not name:
            return None
        try:  # .npy records one after another, in the order the state lists their names
            marks = {str(k): int(v) for k, v in record["marks"].items()}
            with self.output.with_name(str(name)).open("rb") as f:
                arrays = {key: np.load(f, allow_pickle=False) for key in record["arrays"]}
            pending = arrays.pop("pending")
        except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError):
            return None  # unreadable: not trusted, the caller restarts from `rows_done`
        if pending.shape[1]:
            self._take(pending)
        self.marks, self.carry = marks, arrays
        return str(name)

    def add(self, row_off: int, rows: np.ndarray) -> None:
        """Take `(C, h, width)` rows starting at `row_off` (rows already taken are skipped) and
        write every block row they complete."""
        taken = self.rows_done + self._pending_rows
        if row_off + rows.shape[1] > taken:
            self._take(rows[:, max(0, taken - row_off) :])

    def _take(self, rows: np.ndarray) -> None:
        """Copy rows into the block row being filled, writing each block row once full (one
        block row of the output is all that is held, whatever arrives at once)."""
        while rows.shape[1]:
            if self._block is None:
                self._block = np.empty((rows.shape[0], geotiff.BLOCK, rows.shape[2]), rows.dtype)
            end = min(self.height, self.rows_done + geotiff.BLOCK)
            n = min(end - self.rows_done - self._pending_rows, rows.shape[1])
            self._block[:, self._pending_rows : self._pending_rows + n] = rows[:, :n]
            self._pending_rows += n
            rows = rows[:, n:]
            if self.rows_done + self._pending_rows == end:
                geotiff.write_rows(
                    self.partial, self._block[:, : self._pending_rows], self.rows_done
                )
                self.rows_done, self._pending_rows = end, 0

    def commit(
        self, marks: dict[str, int] | None = None, carry: dict[str, np.ndarray] | None = None
    ) -> None:
        """Record the rows on disk; with `marks`, also the caller's counters and arrays and the
        rows taken but not yet written, so a rerun continues exactly here."""
        record: dict[str, Any] = {"job": self.job, "rows_done": self.rows_done}
        if marks is not None:
            self._commits += 1
            path = self.output.with_name(f".{self.output.name}.carry.{self._commits}.npy")
            pending = np.zeros((0, 0, 0)) if self._block is None else self._block
            arrays = {"pending": pending[:, : self._pending_rows], **(carry or {})}
            with atomic_path(path, ".npy") as tmp, tmp.open("wb") as f:
                for array in arrays.values():
                    _write_npy(f, array)
            record |= {"carry": path.name, "arrays": list(arrays), "marks": marks}
            record["commits"] = self._commits
        atomic_write_json(self.state, record)
        for stale in self._carry_files():
            if stale.name != record.get("carry"):
                stale.unlink()

    def write_whole(self, write: Callable[[Path], None]) -> None:
        """Write the partial file in one go with `write` (e.g. `geotiff.copy_tagged`, which
        leaves it complete, flushed and checked, or raises) and record every row as done.

        A rerun of the job that finds every row recorded writes nothing. Otherwise the state is
        removed first, so a run killed inside `write` has recorded nothing and the next run
        discards its partial file; a `write` that raises removes it.
        """
        if self.rows_done == self.height:
            return
        self.state.unlink(missing_ok=True)
        try:
            write(self.partial)
        except BaseException:
            self.partial.unlink(missing_ok=True)
            raise
        self._block, self._pending_rows, self.rows_done = None, 0, self.height
        self.commit()

    def publish(self, output_format: geotiff.OutputFormat) -> None:
        """Publish the complete partial file as the output and remove the progress records."""
        geotiff.finish(self.partial, self.output, output_format)
        self.state.unlink(missing_ok=True)
        for stale in self._carry_files():
            stale.unlink()
