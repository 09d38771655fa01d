"""Resumable partial outputs (`p2p.raster.partial.RowSink`): commits, carries, leftovers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS

from p2p.raster import Grid, geotiff
from p2p.raster.partial import RowSink
from tests.faultkit import UTM

H, W = 600, 70


def _sink(out: Path, job: str = "job-1") -> RowSink:
    sink = RowSink(out, job, H)
    if not sink.resumed:
        grid = Grid(CRS.from_epsg(32633), UTM, W, H)
        geotiff.create(sink.partial, grid, 1, "uint16", 0.0, {})
    return sink


def test_commit_carries_arrays_and_rows_short_of_a_block_row(tmp_path: Path) -> None:
    out = tmp_path / "out.tif"
    rows = np.arange(H * W, dtype=np.uint16).reshape(1, H, W) % 5000 + 1
    acc = np.linspace(0, 1, 3 * W, dtype=np.float32).reshape(1, 3, W)
    sink = _sink(out)
    sink.add(0, rows[:, :300])  # one block row written, 44 rows held
    sink.commit({"window": 7, "strip": 2}, {"acc_3": acc})
    assert sink.rows_done == 256
    again = _sink(out)  # what a rerun after a kill finds
    assert again.resumed and again.rows_done == 256 and again.marks == {"window": 7, "strip": 2}
    np.testing.assert_array_equal(again.carry["acc_3"], acc)
    again.add(0, rows)  # rows already taken (written or carried) are skipped
    again.commit()
    again.publish("gtiff")
    with rasterio.open(out) as ds:
        np.testing.assert_array_equal(ds.read(), rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]


def test_an_unreadable_carry_restarts_from_the_rows_on_disk(tmp_path: Path) -> None:
    out = tmp_path / "out.tif"
    sink = _sink(out)
    sink.add(0, np.ones((1, 300, W), np.uint16))
    sink.commit({"window": 3, "strip": 1}, {"acc_2": np.ones((1, 4, W), np.float32)})
    (carry,) = tmp_path.glob(".out.tif.carry.*.npy")
    carry.write_bytes(carry.read_bytes()[:100])  # a torn write (power loss without fsync)
    again = _sink(out)
    assert again.resumed and again.rows_done == 256 and not again.marks and not again.carry
    assert not carry.exists()
    state = json.loads(again.state.read_text())
    other = _sink(out, job="job-2")  # another job's leftovers are discarded
    assert not other.resumed and state["job"] == "job-1"
    assert not again.state.exists() and other.partial.is_file()
