"""Tiling real GeoTIFF pairs into the chip store: values, geometry, resume, Dask, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from distributed import Client
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.core.config import DaskConfig, SceneConfig, TilingConfig
from p2p.core.dask_client import dask_client
from p2p.core.errors import P2PError
from p2p.data import chipstore
from p2p.data.tiling import ChipGrid
from p2p.stages.tile import run as tile_stage
from tests.rasters import ramp, write_geotiff

UTM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 1000000.0)
DASK = DaskConfig(n_workers=2, threads_per_worker=1)


def make_pair(folder: Path, h: int = 150, w: int = 130, dtype: str = "uint16") -> SceneConfig:
    """A 3-band source with a fill border (value 0) and a 1-band float target on the same grid."""
    src = ramp(3, h, w, dtype) % 250 + 1 if dtype == "uint8" else ramp(3, h, w, dtype) + 1
    src[:, :, :10] = 0
    tgt = (ramp(1, h, w, "float32") * 0.5).astype("float32")
    write_geotiff(folder / "src.tif", src.astype(dtype), transform=UTM)
    write_geotiff(folder / "tgt.tif", tgt, transform=UTM)
    return SceneConfig(source=[str(folder / "src.tif")], target=[str(folder / "tgt.tif")], nodata=0)


def padded(arr: np.ndarray, y0: int, x0: int, k: int, fill: float = 0) -> np.ndarray:
    out = np.full((arr.shape[0], k, k), fill, arr.dtype)
    part = arr[:, y0 : y0 + k, x0 : x0 + k]
    out[:, : part.shape[1], : part.shape[2]] = part
    return out


def store_arrays(folder: str) -> dict[str, np.ndarray]:
    return {k: v[:] for k, v in chipstore.open_arrays(folder).items()}


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_overlapping_chips_hold_the_scene_pixels(
    tmp_path: Path, client: Client, dtype: str
) -> None:
    scene = make_pair(tmp_path, dtype=dtype)
    tiling = TilingConfig(chip_size=32, stride=24, block_chips=2, min_valid_fraction=0.5)
    calls: list[tuple[int, int]] = []
    rec = tile_stage(
        tmp_path / "ws",
        scene,
        tiling,
        DASK,
        progress=lambda d, t: calls.append((d, t)),
        client=client,
    )
    assert not rec.cached and calls[-1] == (9, 9)
    index, arrays = chipstore.read_index(rec.path), store_arrays(rec.path)
    grid = ChipGrid(150, 130, 32, 24, 2)
    assert len(index) == rec.summary["n_chips"] == grid.rows * grid.cols == 6 * 6
    assert arrays["source"].dtype == np.dtype(dtype) and arrays["target"].shape[1] == 1
    src = np.asarray(__import__("rasterio").open(tmp_path / "src.tif").read())
    tgt = np.asarray(__import__("rasterio").open(tmp_path / "tgt.tif").read())
    for row in index.itertuples():
        np.testing.assert_array_equal(arrays["source"][row.chip], padded(src, row.y0, row.x0, 32))
        np.testing.assert_array_equal(arrays["target"][row.chip], padded(tgt, row.y0, row.x0, 32))
        expected_valid = padded((src != 0).all(axis=0)[None], row.y0, row.x0, 32, fill=False)[0]
        np.testing.assert_array_equal(arrays["valid"][row.chip], expected_valid)
        assert row.valid_fraction == pytest.approx(expected_valid.mean())
        assert (row.minx, row.maxy) == (500000 + 10 * row.x0, 1000000 - 10 * row.y0)
    assert rec.summary["chips_kept"] == int((index.valid_fraction >= 0.5).sum())
    assert chipstore.read_meta(rec.path)["target"]["resampled"] is False  # same grid: no warp
    again = tile_stage(tmp_path / "ws", scene, tiling, DASK, client=client)
    assert again.cached and again.path == rec.path


def test_uncompressed_store_holds_the_same_chips_under_the_same_key(
    tmp_path: Path, client: Client
) -> None:
    scene = make_pair(tmp_path, 100, 100)
    lz4 = TilingConfig(chip_size=32, stride=24, block_chips=2)
    plain = lz4.model_copy(update={"compression": "none"})
    a = tile_stage(tmp_path / "a", scene, lz4, DASK, client=client)
    b = tile_stage(tmp_path / "b", scene, plain, DASK, client=client)
    assert a.key == b.key  # only bytes on disk differ
    arrays_a, arrays_b = chipstore.open_arrays(a.path), chipstore.open_arrays(b.path)
    for name in arrays_a:
        assert arrays_a[name].compressors and not arrays_b[name].compressors
        np.testing.assert_array_equal(arrays_a[name][:], arrays_b[name][:])
    assert chipstore.read_index(a.path).equals(chipstore.read_index(b.path))


def test_target_on_another_grid_is_chipped_on_the_source_grid(
    tmp_path: Path, client: Client
) -> None:
    write_geotiff(tmp_path / "src.tif", ramp(2, 96, 96) + 1, transform=UTM)
    coarse = np.arange(48 * 48, dtype=np.float32).reshape(1, 48, 48)
    # 20 m pixels, shifted by 2 pixels (40 m) east and south of the source origin.
    write_geotiff(
        tmp_path / "tgt.tif", coarse, transform=Affine(20, 0, 500040, 0, -20, 999960), nodata=-1
    )
    scene = SceneConfig(source=[str(tmp_path / "src.tif")], target=[str(tmp_path / "tgt.tif")])
    tiling = TilingConfig(chip_size=32, stride=32, block_chips=2, resampling="nearest")
    rec = tile_stage(tmp_path / "ws", scene, tiling, DASK, client=client)
    arrays, index = store_arrays(rec.path), chipstore.read_index(rec.path)
    first = index[(index.row == 0) & (index.col == 0)].chip.item()
    # Source pixel (row 9, col 13) has its centre at (500135, 999905) → target col 4.75, row 2.75.
    assert arrays["target"][first, 0, 9, 13] == coarse[0, 2, 4]
    assert not arrays["valid"][first, :4].any() and arrays["valid"][first, 4:, 4:].all()


def test_tiling_on_its_own_cluster_and_on_worker_processes(tmp_path: Path) -> None:
    scene = make_pair(tmp_path, 100, 100)
    tiling = TilingConfig(chip_size=32, stride=32, block_chips=1)
    dask = DaskConfig(n_workers=2, threads_per_worker=1)
    rec = tile_stage(tmp_path / "ws", scene, tiling, dask)  # its own (threaded) LocalCluster
    index, arrays = chipstore.read_index(rec.path), store_arrays(rec.path)
    assert len(index) == 16 and sorted(index.block) == sorted(
        f"{r}_{c}" for r in range(4) for c in range(4)
    )
    src = np.asarray(__import__("rasterio").open(tmp_path / "src.tif").read())
    for row in index.itertuples():
        np.testing.assert_array_equal(arrays["source"][row.chip], padded(src, row.y0, row.x0, 32))
    # Worker processes get the jobs pickled, as a remote scheduler does: same store.
    with dask_client(dask, processes=True) as procs:
        other = tile_stage(tmp_path / "ws_procs", scene, tiling, dask, client=procs)
    assert chipstore.read_index(other.path).equals(index)
    for name, values in store_arrays(other.path).items():
        np.testing.assert_array_equal(values, arrays[name])


KILL_SCRIPT = """
import sys, time
from distributed import Client, LocalCluster
from p2p.core.config import DaskConfig, SceneConfig, TilingConfig
from p2p.stages.tile import run as tile_stage
scene = SceneConfig.model_validate_json(sys.argv[2])
tiling = TilingConfig.model_validate_json(sys.argv[3])
if __name__ == "__main__":
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False)
    slow = lambda done, total: time.sleep(0.3)  # slows the run so the test can kill it
    tile_stage(sys.argv[1], scene, tiling, DaskConfig(), progress=slow, client=Client(cluster))
"""


@pytest.mark.slow
def test_killed_tiling_resumes_to_an_identical_store(tmp_path: Path, client: Client) -> None:
    scene = make_pair(tmp_path, 160, 160)
    tiling = TilingConfig(chip_size=32, stride=16, block_chips=1)
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    killed_ws = tmp_path / "killed"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(script),
            str(killed_ws),
            scene.model_dump_json(),
            tiling.model_dump_json(),
        ],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    deadline = time.time() + 60
    markers: list[Path] = []
    while time.time() < deadline and len(markers) < 3:
        markers = list(killed_ws.glob("tile/*/blocks/*.done"))
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 3 <= len(markers) < 81, "the run was not interrupted half way"
    assert not list(killed_ws.glob("tile/*/manifest.json"))
    resumed = tile_stage(killed_ws, scene, tiling, DASK, client=client)
    fresh = tile_stage(tmp_path / "fresh", scene, tiling, DASK, client=client)
    assert resumed.key == fresh.key and not resumed.cached
    a, b = store_arrays(resumed.path), store_arrays(fresh.path)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert chipstore.read_index(resumed.path).equals(chipstore.read_index(fresh.path))
    assert json.loads((Path(resumed.path) / "meta.json").read_text()) == json.loads(
        (Path(fresh.path) / "meta.json").read_text()
    )


def _assert_fails_cleanly(
    ws: Path, scene: SceneConfig, tiling: TilingConfig, match: str, client: Client
) -> None:
    with pytest.raises(P2PError, match=match) as info:
        tile_stage(ws, scene, tiling, DASK, client=client)
    assert "\n" not in str(info.value)
    assert not list(ws.glob("**/manifest.json")) and not list(ws.glob("tile/*/chips.zarr"))


def test_bad_inputs_fail_with_one_line_and_no_artifact(tmp_path: Path, client: Client) -> None:
    good = make_pair(tmp_path)
    tiling = TilingConfig(chip_size=32, stride=32)
    ws = tmp_path / "ws"
    write_geotiff(tmp_path / "b2.tif", ramp(1, 150, 130), transform=UTM @ Affine.scale(2))
    two_grids = good.model_copy(update={"source": [good.source[0], str(tmp_path / "b2.tif")]})
    _assert_fails_cleanly(ws, two_grids, tiling, r"b2\.tif: grid .* differs from", client)
    write_geotiff(
        tmp_path / "far.tif", ramp(1, 50, 50), transform=UTM @ Affine.translation(5000, 0)
    )
    far = good.model_copy(update={"target": [str(tmp_path / "far.tif")]})
    _assert_fails_cleanly(ws, far, tiling, r"far\.tif: does not overlap", client)
    _assert_fails_cleanly(
        ws, good, TilingConfig(chip_size=256, stride=256), "larger than the scene", client
    )
    missing = good.model_copy(update={"target": [str(tmp_path / "nope.tif")]})
    _assert_fails_cleanly(ws, missing, tiling, r"nope\.tif: file not found", client)
    write_geotiff(tmp_path / "empty.tif", np.zeros((1, 64, 64), np.uint16))
    empty = good.model_copy(update={"source": [str(tmp_path / "empty.tif")]})
    _assert_fails_cleanly(ws, empty, tiling, "no valid pixel", client)


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(8, 300),
    w=st.integers(8, 300),
    k=st.integers(4, 64),
    stride_frac=st.floats(0.1, 1.0),
    b=st.integers(1, 5),
)
def test_chip_grid_covers_the_scene_and_blocks_own_distinct_slots(
    h: int, w: int, k: int, stride_frac: float, b: int
) -> None:
    k = min(k, h, w)
    grid = ChipGrid(h, w, k, max(1, int(k * stride_frac)), b)
    covered = np.zeros((h, w), bool)
    slots: list[int] = []
    for block in grid.blocks():
        win = grid.window(block)
        covered[win.row_off : win.row_off + win.height, win.col_off : win.col_off + win.width] = (
            True
        )
        n = (block.row1 - block.row0) * (block.col1 - block.col0)
        slots.extend(range(block.slot0, block.slot0 + n))
        assert n <= b * b
    assert covered.all()
    assert len(set(slots)) == len(slots) == grid.rows * grid.cols and max(slots) < grid.n_slots
    assert (grid.rows - 1) * grid.stride < h <= (grid.rows - 1) * grid.stride + k
