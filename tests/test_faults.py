"""Faults: SIGKILL at any point of any stage, a full or read-only disk.

The kill matrix runs `tests.fault_pipeline` (tile → dataset → train → predict → mosaic on tiny
data) in a subprocess that SIGKILLs itself at one point per run, each point a moment where an
artifact is complete under its temporary name but not yet renamed. Each rerun resumes the
previous kill and goes on to the next point; the last run finishes. The result must equal an
uninterrupted run bit for bit. Mid-run kills of tiling, training and prediction driven by their
progress are in test_tiling, test_training and test_inference; this adds the points they miss:
final writes of every stage, the dataset, the bundle, the mosaic, and resuming across stages.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import rasterio
import typer

from p2p.app.cli import guard
from p2p.core.cache import read_manifest
from p2p.core.config import PredictConfig, SceneConfig
from p2p.data import chipstore
from p2p.stages.predict import run as predict_stage
from tests.fault_pipeline import write_data
from tests.faultkit import (
    P2P,
    PREDICT_OPTS,
    ROOT,
    assert_failed_cleanly,
    assert_one_line_error,
    cli_in_process,
    finished_looking,
    leftovers,
    unshare_works,
    write_scene,
    write_tiny_bundle,
)

# (regex of the destination, occurrence, what the moment is)
KILL_POINTS = [
    (r"/blocks/\d+_\d+\.done$", 2, "tile: mid-stage, 1 of 4 blocks marked done"),
    (r"/tile/\w+/manifest\.json$", 1, "tile: its manifest, the last write"),
    (r"/dataset/\w+/split\.json$", 1, "dataset: stats.json written, split.json not"),
    (r"/checkpoints/epoch_0002\.safetensors$", 1, "train: mid-stage, writing epoch 2 of 3"),
    (r"/train/\w+/model$", 1, "train: swapping the finished bundle in"),
    (r"/\.a\.tif\.state\.json$", 2, "predict: mid-scene, 512 of 600 rows recorded"),
    (r"/predict/\w+/b\.tif$", 1, "predict: publishing the finished COG"),
    (r"/mosaic/\w+/mosaic\.tif$", 1, "mosaic: publishing the finished mosaic"),
]


def _child(ws: Path, data: dict[str, str], kill: tuple[str, int] | None = None) -> Any:
    args = [sys.executable, "-m", "tests.fault_pipeline", str(ws), json.dumps(data)]
    if kill is not None:
        args += [kill[0], str(kill[1])]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def _trusted_state_parses(ws: Path) -> None:
    """Every file a rerun trusts (manifests, markers, state, stats, split) is whole JSON."""
    names = ("manifest.json", "split.json", "stats.json", "meta.json")
    for path in ws.rglob("*"):
        if path.name in names or path.name.endswith((".done", ".state.json")):
            json.loads(path.read_text())


def _assert_same_artifacts(got: dict[str, Any], want: dict[str, Any]) -> None:
    a, b = chipstore.open_arrays(got["tile"]), chipstore.open_arrays(want["tile"])
    for name in a:
        assert (a[name][:] == b[name][:]).all(), f"chip store {name} differs"
    pd.testing.assert_frame_equal(
        chipstore.read_index(got["tile"]), chipstore.read_index(want["tile"])
    )
    for name in ("stats.json", "split.json"):
        x = json.loads(Path(got["dataset"], name).read_text())
        y = json.loads(Path(want["dataset"], name).read_text())
        x.pop("tiles", None), y.pop("tiles", None)  # absolute workspace paths
        assert x == y, f"{name} differs"
    for name in ("weights.safetensors", "model.json"):
        x_bytes = Path(got["model"], name).read_bytes()
        y_bytes = Path(want["model"], name).read_bytes()
        if name == "model.json":
            x_meta, y_meta = json.loads(x_bytes), json.loads(y_bytes)
            x_meta["training"].pop("dataset_key"), y_meta["training"].pop("dataset_key")
            assert x_meta == y_meta
        else:
            assert x_bytes == y_bytes, "bundle weights differ"
    for x_path, y_path in zip(
        [*got["predictions"], got["mosaic"]], [*want["predictions"], want["mosaic"]], strict=True
    ):
        assert Path(x_path).read_bytes() == Path(y_path).read_bytes(), f"{x_path} differs"


@pytest.mark.slow
def test_sigkill_at_every_stage_then_rerun_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    data = write_data(tmp_path / "data")
    ref = _child(tmp_path / "ref", data)
    assert ref.returncode == 0, ref.stderr
    want = json.loads(ref.stdout.splitlines()[-1])

    ws = tmp_path / "ws"
    for pattern, nth, moment in KILL_POINTS:
        killed = _child(ws, data, (pattern, nth))
        assert killed.returncode == -signal.SIGKILL, f"{moment}: not killed\n{killed.stderr}"
        _trusted_state_parses(ws)
    done = _child(ws, data)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.splitlines()[-1])
    # the last kill hit the mosaic: every earlier stage was finished and comes back cached
    assert got["cached"] == [True, True, True, True, True, False]
    # same stage keys, so the same folders; the mosaic's key fingerprints its inputs' mtimes
    for key, value in want.items():
        if key in ("cached", "mosaic"):
            continue
        rel = json.dumps(value).replace(str(tmp_path / "ref"), str(ws))
        assert json.dumps(got[key]) == rel, f"{key} lives elsewhere"
    _assert_same_artifacts(got, want)


# --- a full or read-only disk (os.replace mocked to fail: only the failure, not the stage) --


def _fail_replace_onto(monkeypatch: pytest.MonkeyPatch, name: str, code: int) -> list[str]:
    """Make os.replace onto a path ending in `name` fail with `code`; returns the attempts."""
    real, attempts = os.replace, []

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if str(dst).endswith(name):
            attempts.append(str(dst))
            raise OSError(code, os.strerror(code), str(src), None, str(dst))
        real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return attempts


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bundle(tmp_path_factory.mktemp("bundle") / "model")


@pytest.mark.parametrize("fmt", ["gtiff", "cog"])
def test_disk_full_while_publishing_a_prediction(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    scene = write_scene(tmp_path / "scene.tif", height=80, width=48)
    out = tmp_path / "out" / "pred.tif"
    args = ["predict", "--model", model, "--input", scene, "--output", out, *PREDICT_OPTS]
    args[args.index("gtiff")] = fmt
    attempts = _fail_replace_onto(monkeypatch, "pred.tif", errno.ENOSPC)
    result = cli_in_process(args)
    assert attempts, "the publishing rename was never tried"
    line = assert_one_line_error(result.exit_code, result.stderr, out)
    assert "No space left on device" in line and "rerun to resume" in line
    # only the finished stages of the prediction's workspace (.p2p-work) remain, for the rerun
    trusted = finished_looking(out.parent)
    assert not out.exists() and all(f.startswith(".p2p-work/") for f in trusted), trusted
    monkeypatch.undo()
    again = cli_in_process(args)
    assert again.exit_code == 0, again.stderr
    with rasterio.open(out) as ds:
        assert ds.read(1).any()


def test_disk_full_on_a_stage_manifest_leaves_the_stage_unfinished(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    scene = SceneConfig(source=str(write_scene(tmp_path / "scene.tif")))
    config = PredictConfig(tile_size=32, overlap=4, device="cpu", output_format="gtiff")
    ws = tmp_path / "ws"
    _fail_replace_onto(monkeypatch, "manifest.json", errno.ENOSPC)
    with pytest.raises(typer.Exit) as exit_info:
        guard(lambda: predict_stage(ws, model, scene, config))
    assert exit_info.value.exit_code == 1
    (folder,) = [p for p in (ws / "predict").iterdir() if p.is_dir()]
    assert_one_line_error(1, capsys.readouterr().err, folder / "manifest.json")
    assert read_manifest(folder) is None and leftovers(folder) == ["scene.tif"]
    monkeypatch.undo()
    record = predict_stage(ws, model, scene, config)  # the rerun finishes what is there
    assert not record.cached and read_manifest(folder) is not None


def test_read_only_output_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # root ignores chmod, so the read-only file system is the failure of creating the temporary
    pred = write_scene(tmp_path / "pred.tif", bands=1)
    error_map = tmp_path / "out" / "error.tif"
    real = os.open

    def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_CREAT and str(path).startswith(str(error_map.parent)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    args = ["evaluate", "--prediction", pred, "--target", pred, "--error-map", error_map]
    line = assert_failed_cleanly(cli_in_process(args), error_map.parent)
    assert "Read-only file system" in line
    assert leftovers(error_map.parent) == []


@pytest.mark.slow
@pytest.mark.skipif(not unshare_works(), reason="needs user+mount namespaces for a tmpfs")
def test_really_full_and_read_only_disks(tmp_path: Path, model: Path) -> None:
    """The whole CLI against a real 96 KiB tmpfs and a read-only one (no mocks at all)."""
    scene = write_scene(tmp_path / "scene.tif", height=400, width=300)
    full, ro = tmp_path / "full", tmp_path / "ro"
    full.mkdir(), ro.mkdir()
    opts = " ".join(PREDICT_OPTS).replace("gtiff", "cog")
    e1, e2 = tmp_path / "predict.err", tmp_path / "evaluate.err"  # each command's whole stderr
    script = (
        f"mount -t tmpfs -o size=96k tmpfs {full} && mount -t tmpfs -o size=96k,ro tmpfs {ro}"
        f" && {P2P} predict --model {model} --input {scene} --output {full}/p.tif {opts} 2>{e1}"
        f"; echo rc=$? >&2; ls -a {full} >&2; echo === >&2"
        f"; {P2P} evaluate --prediction {scene} --target {scene} --error-map {ro}/e.tif 2>{e2}"
        f"; echo rc=$? >&2"
    )
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    first, second = proc.stderr.split("===")
    assert "rc=1" in first and "\np.tif\n" not in first
    # libtiff (inside GDAL) writes its own complaint straight to file descriptor 2, past any
    # Python handler; those lines are the only others allowed, and nothing else (no GDAL log,
    # no traceback, no progress frame)
    *libtiff, last = e1.read_text().splitlines(keepends=True)
    assert all(re.fullmatch(r"_tiff\w+: No space left on device\.\n", x) for x in libtiff), libtiff
    line = assert_one_line_error(1, last)
    assert "disk full" in line or "No space left" in line
    assert "rc=1" in second
    assert "Read-only file system" in assert_one_line_error(1, e2.read_text())
