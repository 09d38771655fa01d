"""Resumable outputs: a partial GeoTIFF written in block rows, and the record of its progress.

An output NAME is written at ``.NAME.partial.tif`` beside it. Each `RowSink.commit` records,
atomically, the rows on disk in ``.NAME.state.json``, and may add the writer's *carry*: the
arrays it needs to go on from where it stands without recomputing anything (for prediction,
the blend accumulators of the strips in flight), saved with the rows that do not fill a block
row yet in ``.NAME.carry.N.npz`` (N counts commits, so a state never names a half-written
carry). A rerun of the same job (same fingerprint) continues from the last commit; whatever a
different job left is discarded. `RowSink.publish` renames or assembles the finished file.
"""

from __future__ import annotations

import contextlib
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from p2p.core.fsutil import atomic_path, atomic_write_json, read_json
from p2p.raster import geotiff


def partial_paths(output: Path) -> tuple[Path, Path]:
    """The partial file and the state file of an output being written."""
    return (
        output.with_name(f".{output.name}.partial.tif"),
        output.with_name(f".{output.name}.state.json"),
    )


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
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._load()

    def _carry_files(self) -> list[Path]:
        return sorted(self.output.parent.glob(f".{self.output.name}.carry.*.npz"))

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
        try:
            with np.load(self.output.with_name(name), allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile):
            return None
        pending = arrays.pop("pending")
        if pending.shape[1]:
            self._pending, self._pending_rows = [pending], pending.shape[1]
        self.marks, self.carry = dict(record["marks"]), arrays
        return str(name)

    def add(self, row_off: int, rows: np.ndarray) -> None:
        """Take `(C, h, width)` rows starting at `row_off` (rows already taken are skipped) and
        write every block row they complete."""
        taken = self.rows_done + self._pending_rows
        if row_off + rows.shape[1] <= taken:
            return
        rows = rows[:, max(0, taken - row_off) :]
        self._pending.append(rows)
        self._pending_rows += rows.shape[1]
        top = self.rows_done + self._pending_rows
        ready = self.height if top >= self.height else top // geotiff.BLOCK * geotiff.BLOCK
        if ready > self.rows_done:
            block = np.concatenate(self._pending, axis=1)
            n = ready - self.rows_done
            geotiff.write_rows(self.partial, block[:, :n], self.rows_done)
            self.rows_done = ready
            self._pending = [block[:, n:]] if n < block.shape[1] else []
            self._pending_rows = block.shape[1] - n

    def commit(
        self, marks: dict[str, int] | None = None, carry: dict[str, np.ndarray] | None = None
    ) -> None:
        """Record the rows on disk; with `marks`, also the caller's counters and arrays and the
        rows taken but not yet written, so a rerun continues exactly here."""
        record: dict[str, Any] = {"job": self.job, "rows_done": self.rows_done}
        if marks is not None:
            self._commits += 1
            path = self.output.with_name(f".{self.output.name}.carry.{self._commits}.npz")
            pending = np.concatenate(self._pending or [np.zeros((0, 0, 0))], axis=1)
            arrays = {"pending": pending, **(carry or {})}
            with atomic_path(path, ".npz") as tmp, tmp.open("wb") as f:
                np.savez(f, allow_pickle=False, **arrays)
            record |= {"carry": path.name, "marks": marks, "commits": self._commits}
        atomic_write_json(self.state, record)
        for stale in self._carry_files():
            if stale.name != record.get("carry"):
                stale.unlink()

    def publish(self, output_format: geotiff.OutputFormat) -> None:
        """Publish the complete partial file as the output and remove the progress records."""
        geotiff.finish(self.partial, self.output, output_format)
        self.state.unlink(missing_ok=True)
        for stale in self._carry_files():
            stale.unlink()
