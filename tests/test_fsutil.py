"""Atomic writes: a failed flush fails the write; published files get the umask's mode."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from p2p.bands.normalization import BandStats
from p2p.core.cache import write_manifest
from p2p.core.config import MosaicConfig, PredictConfig, SceneConfig
from p2p.core.errors import OutputError
from p2p.core.fsutil import atomic_write_json
from p2p.infer.inference import predict_scene
from p2p.infer.mosaic import mosaic_scenes
from p2p.model.bundle import BundleMeta, load_bundle, write_bundle
from p2p.model.networks import UNetGenerator
from p2p.raster.geotiff import publishing, write_rows
from tests.rasters import ramp, write_geotiff


def _failing_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every fsync of a regular file fail as a dying disk would (EIO)."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_failed_fsync_fails_the_write_and_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "manifest.json"
    atomic_write_json(target, {"v": 1})
    _failing_fsync(monkeypatch)
    with pytest.raises(OSError, match="Input/output error") as info:
        atomic_write_json(target, {"v": 2})
    assert info.value.filename == str(target)
    assert '"v": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_failed_fsync_of_written_rows_is_an_output_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = write_geotiff(tmp_path / "rows.tif", ramp(1, 64, 64))
    _failing_fsync(monkeypatch)
    with pytest.raises(OutputError, match=r"rows\.tif.*fsync"):
        write_rows(src, ramp(1, 64, 64)[:, :32], 0)


@pytest.fixture(params=[0o022, 0o027])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield int(request.param)
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_published_files_get_the_mode_a_plain_open_gives(tmp_path: Path, umask: int) -> None:
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    stats = BandStats((1.0,), (1.0,), (0.0,), (10.0,)).to_dict()
    meta = BundleMeta(
        in_channels=1,
        out_channels=1,
        source_bands=["a"],
        target_bands=["b"],
        source_stats=stats,
        target_stats=stats,
        target_dtype="uint16",
        target_nodata=0.0,
        source_nodata=None,
        chip_size=16,
        model={"num_downs": 3, "ngf": 4, "norm": "batch", "dropout": 0.0},
    )
    model = write_bundle(tmp_path / "model", UNetGenerator(1, 1, num_downs=3, ngf=4), meta)
    assert _mode(model) == dir_mode
    assert {_mode(p) for p in model.iterdir()} == {file_mode}

    scene = write_geotiff(tmp_path / "scene.tif", ramp(1, 40, 48) + 1, nodata=0)
    outputs = []
    for fmt in ("gtiff", "cog"):
        config = PredictConfig(tile_size=16, overlap=4, device="cpu", output_format=fmt)
        out = tmp_path / "out" / f"pred-{fmt}.tif"
        predict_scene(load_bundle(model), SceneConfig(source=str(scene)), out, config)
        outputs.append(out)
    mosaic = tmp_path / "out" / "mosaic.tif"
    mosaic_scenes(outputs, mosaic, MosaicConfig(), output_format="cog")
    write_manifest(tmp_path / "out", {"done": True})
    with publishing(tmp_path / "out" / "published.tif", "gtiff") as work:
        write_geotiff(work, np.zeros((1, 16, 16), np.uint8))
    published = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert published == [
        "manifest.json",
        "mosaic.tif",
        "pred-cog.tif",
        "pred-gtiff.tif",
        "published.tif",
    ]
    assert {p.name: _mode(p) for p in (tmp_path / "out").iterdir()} == dict.fromkeys(
        published, file_mode
    )
