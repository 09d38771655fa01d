"""The prediction engine's threads and devices: a threaded run (reader and writer threads), and
the torch-tensor path that runs on CUDA (run here on the CPU), write what the sequential numpy
loop writes, commit what it commits, resume to its bytes after a kill, and fail like it: the
original error, no hang, no thread left behind."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from p2p.core.config import PredictConfig, SceneConfig
from p2p.core.errors import InputError
from p2p.infer import runtime, strips
from p2p.infer.inference import predict_scene
from p2p.infer.pipeline import Prefetch, Writer
from p2p.model.bundle import Bundle, load_bundle
from p2p.raster import SceneReader
from p2p.raster.partial import RowSink
from tests.faultkit import (
    PREDICT_OPTS,
    assert_failed_cleanly,
    cli,
    cli_in_process,
    write_scene,
    write_tiny_bundle,
)
from tests.rasters import ramp, write_geotiff

CFG = PredictConfig(tile_size=32, overlap=4, batch_size=3, output_format="gtiff", device="cpu")
#: Engine variants: (queue depth, device types that run torch tensors). Depth 0 with numpy is
#: the sequential reference.
SEQUENTIAL = (0, ("cuda",))
VARIANTS = {
    "threads": (2, ("cuda",)),
    "tensors": (2, ("cpu", "cuda")),
    "tensors-seq": (0, ("cpu",)),
}


def engine_threads() -> list[threading.Thread]:
    """The engine's reader and writer threads still alive (other tests' threads, Prefect's or
    Dask's, may come and go meanwhile; the process's CPU forward threads, `p2p-forward`, stay
    by design, like torch's own OpenMP threads)."""
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith("p2p-") and not t.name.startswith("p2p-forward")
    ]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return load_bundle(write_tiny_bundle(tmp_path_factory.mktemp("bundle") / "model"))


def _engine(monkeypatch: pytest.MonkeyPatch, variant: tuple[int, tuple[str, ...]]) -> None:
    depth, devices = variant
    monkeypatch.setattr(strips, "PIPELINE_DEPTH", depth)
    monkeypatch.setattr(runtime, "TENSOR_DEVICES", devices)


def _run_recording_commits(
    bundle: Bundle, scene: Path, out: Path, config: PredictConfig, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[Any, ...]]:
    """Predict, and return every commit as (rows on disk, rows short of a block row, marks,
    the carry's arrays)."""
    commits: list[tuple[Any, ...]] = []
    real = RowSink.commit

    def commit(sink: RowSink, marks: Any = None, carry: Any = None) -> None:
        pending = 0 if sink._block is None else sink._pending_rows
        arrays = {key: np.array(a) for key, a in (carry or {}).items()}
        commits.append((sink.rows_done, pending, marks, arrays))
        real(sink, marks, carry)

    monkeypatch.setattr(RowSink, "commit", commit)
    predict_scene(bundle, SceneConfig(source=str(scene)), out, config)
    monkeypatch.setattr(RowSink, "commit", real)
    return commits


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("tta", [False, True])
def test_engine_writes_and_commits_what_the_sequential_loop_does(
    tmp_path: Path, bundle: Bundle, monkeypatch: pytest.MonkeyPatch, variant: str, tta: bool
) -> None:
    scene = write_scene(tmp_path / "scene.tif", height=300, width=90)
    config = CFG.model_copy(update={"tta": tta})
    runs = {}
    for name, engine in (("sequential", SEQUENTIAL), (variant, VARIANTS[variant])):
        _engine(monkeypatch, engine)
        out = tmp_path / name / "pred.tif"
        commits = _run_recording_commits(bundle, scene, out, config, monkeypatch)
        runs[name] = (commits, out.read_bytes())
    (ref_commits, ref_bytes), (commits, data) = runs["sequential"], runs[variant]
    assert len(ref_commits) >= 5 and any(c[1] for c in ref_commits)  # carries mid-block rows
    assert [c[:3] for c in commits] == [c[:3] for c in ref_commits]  # the same commit points
    for (*_, arrays), (*_, ref_arrays) in zip(commits, ref_commits, strict=True):
        assert arrays.keys() == ref_arrays.keys()
        for key, ref in ref_arrays.items():
            if variant == "threads":  # the same numpy operations: the same bits
                np.testing.assert_array_equal(arrays[key], ref)
            else:  # torch on the CPU: float32 rounding at most (docs/inference.md, precision)
                np.testing.assert_allclose(arrays[key], ref, rtol=0, atol=1e-5)
    if variant == "threads":
        assert data == ref_bytes
    else:  # within 1 unit of the uint16 output (a value on a rounding boundary)
        out, ref = (tmp_path / name / "pred.tif" for name in (variant, "sequential"))
        with rasterio.open(out) as a, rasterio.open(ref) as b:
            diff = np.abs(a.read().astype(np.int64) - b.read())
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert not engine_threads()


def test_wide_scene_many_reads_per_row(
    tmp_path: Path, bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several reads per window row in flight on the reader thread: same bytes."""
    monkeypatch.setattr(strips, "READ_COLUMNS", 40)
    scene = write_scene(tmp_path / "scene.tif", height=70, width=260)
    pixels = []
    for engine in (SEQUENTIAL, VARIANTS["tensors"]):
        _engine(monkeypatch, engine)
        out = predict_scene(bundle, SceneConfig(source=str(scene)), tmp_path / "p.tif", CFG)
        with rasterio.open(out.output) as ds:
            pixels.append(ds.read())
    np.testing.assert_array_equal(pixels[0], pixels[1])
    assert (pixels[0] > 0).all()


def test_reader_failure_is_the_original_error_and_leaves_no_thread(
    tmp_path: Path, bundle: Bundle
) -> None:
    whole = write_geotiff(
        tmp_path / "whole.tif", ramp(2, 400, 64) + 1, nodata=0, blocksize=16, compress="deflate"
    )
    cut = tmp_path / "cut.tif"
    data = whole.read_bytes()
    n = len(data)  # garbage over the tiles of rows ~260-300: found only when they are decoded
    junk = np.random.default_rng(0).integers(0, 256, n // 10, dtype=np.uint8).tobytes()
    cut.write_bytes(data[: n * 3 // 4] + junk + data[n * 3 // 4 + len(junk) :])
    out = tmp_path / "out" / "pred.tif"
    with pytest.raises(InputError, match="truncated or corrupt") as info:
        predict_scene(bundle, SceneConfig(source=str(cut)), out, CFG)
    assert str(cut) in str(info.value)
    assert not engine_threads()
    # rows read before the damage were written and committed, as the sequential loop does
    state = json.loads(out.with_name(".pred.tif.state.json").read_text())
    assert state["marks"]["strip"] >= 8 and not out.exists()
    model = tmp_path / "model"
    write_tiny_bundle(model)
    args = ["predict", "--model", model, "--input", cut, "--output", out, *PREDICT_OPTS]
    line = assert_failed_cleanly(cli(args, timeout=120), cut)
    assert "truncated or corrupt" in line


def test_writer_failure_is_the_original_error_and_leaves_no_thread(
    tmp_path: Path, bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk while committing (on the writer thread) stops the run with that error."""
    scene = write_scene(tmp_path / "scene.tif", height=400, width=64)
    real = os.replace
    commits = []

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if str(dst).endswith(".state.json"):
            commits.append(threading.current_thread().name)
            if len(commits) == 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src), None, str(dst))
        real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    out = tmp_path / "out" / "pred.tif"
    with pytest.raises(OSError, match="No space left") as info:
        predict_scene(bundle, SceneConfig(source=str(scene)), out, CFG)
    assert info.value.errno == errno.ENOSPC
    assert commits == ["p2p-writer"] * 3  # committed on the writer thread; none after the error
    assert not engine_threads()
    model = write_tiny_bundle(tmp_path / "model")
    commits.clear()
    args = ["predict", "--model", model, "--input", scene, "--output", out, *PREDICT_OPTS]
    line = assert_failed_cleanly(cli_in_process(args))
    assert "No space left on device" in line
    assert not engine_threads()


def test_writer_discards_tasks_after_a_failure_and_raises_it() -> None:
    ran: list[int] = []

    def fail() -> None:
        raise ValueError("disk on fire")

    with pytest.raises(ValueError, match="disk on fire"), Writer(2) as writer:
        writer.submit(lambda: ran.append(1))
        writer.submit(fail)
        writer.submit(lambda: ran.append(3))  # may be queued before the failure is seen
    assert ran == [1] and not engine_threads()
    with Prefetch(iter(range(100)), 2) as items:  # a consumer that stops early
        assert next(items) == 0
    assert not engine_threads()


RESUME_SCRIPT = """
import sys, time
from p2p.model.bundle import load_bundle
from p2p.core.config import PredictConfig, SceneConfig
from p2p.infer import runtime
from p2p.infer.inference import predict_scene
runtime.TENSOR_DEVICES = ("cpu",)  # the tensor path, threaded (the default depth)
config = PredictConfig.model_validate_json(sys.argv[4])
slow = lambda done, total: time.sleep(0.2)  # leaves time to kill mid-scene
predict_scene(load_bundle(sys.argv[1]), SceneConfig(source=sys.argv[2]), sys.argv[3], config, slow)
"""


@pytest.mark.slow
def test_killed_threaded_run_resumes_to_the_sequential_bytes(
    tmp_path: Path, bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = write_tiny_bundle(tmp_path / "model")
    scene = write_scene(tmp_path / "scene.tif", height=900, width=48)
    out = tmp_path / "killed" / "pred.tif"
    state = out.with_name(".pred.tif.state.json")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    args = [str(model), str(scene), str(out), CFG.model_dump_json()]
    proc = subprocess.Popen([sys.executable, "-c", RESUME_SCRIPT, *args], env=env)
    carried: dict[str, Any] = {}
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline and not carried:
        record = json.loads(state.read_text() or "{}") if state.is_file() else {}
        if record.get("carry") and record["rows_done"] >= 256:
            carried = record
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert carried and not out.exists()
    _engine(monkeypatch, VARIANTS["tensors"])
    resumed = predict_scene(bundle, SceneConfig(source=str(scene)), out, CFG)
    assert resumed.resumed_rows >= 256
    _engine(monkeypatch, SEQUENTIAL)
    fresh = predict_scene(bundle, SceneConfig(source=str(scene)), tmp_path / "fresh.tif", CFG)
    assert out.read_bytes() == Path(fresh.output).read_bytes()
    assert sorted(p.name for p in out.parent.iterdir()) == ["pred.tif"]


def test_a_thread_that_fails_to_start_its_gdal_options_is_an_error_not_a_hang(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # rasterio refuses AWS keys as options; the reader and the writer must hand that failure
    # over instead of leaving the model thread waiting for them forever
    from rasterio.errors import EnvError

    from p2p.infer import pipeline

    monkeypatch.setattr(pipeline, "_gdal_options", lambda: {"AWS_ACCESS_KEY_ID": "x"})
    with pytest.raises(EnvError), Prefetch(iter(range(10)), 2) as items:
        next(items)
    with pytest.raises(EnvError), Writer(2) as writer:
        for _ in range(10):  # more than the queue holds: none of these may block
            writer.submit(lambda: None)
        writer.wait()
    assert not engine_threads()


def test_shared_rows_of_window_rows_are_read_once_and_are_the_same(tmp_path: Path) -> None:
    """Window rows overlap by tile - stride rows: the next row takes them from the previous
    read (`strips._read_rows`) and reads only the rows below; values and validity equal one
    read of the whole window (a nodata hole crosses the shared rows)."""
    values = ramp(3, 300, 90) + 1
    values[:, 100:130, 20:40] = 0
    path = write_geotiff(tmp_path / "scene.tif", values, nodata=0, blocksize=16)
    tile, stride = 64, 48
    with SceneReader(path) as reader:
        whole = reader.read
        asked: list[Window] = []

        def spy(window: Window) -> tuple[np.ndarray, np.ndarray]:
            asked.append(window)
            return whole(window)

        reader.read = spy  # type: ignore[method-assign]
        carry: strips.Carry = {}
        for top in range(0, 300 - tile + 1, stride):
            window = Window(10, top, 50, tile)
            data, valid = strips._read_rows(reader, window, carry, 0, tile - stride)
            want, want_valid = whole(window)
            assert np.array_equal(data, want) and np.array_equal(valid, want_valid)
    assert asked[0].height == tile and {w.height for w in asked[1:]} == {stride}
