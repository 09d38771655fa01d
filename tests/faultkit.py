"""Helpers for the reliability tests: tiny bundles and scenes, CLI calls, clean-failure checks.

Everything here is small on purpose (64 px scenes, a 4-filter U-Net) so the bad-input, fault
and security tests stay fast on a 2-core CI runner.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from affine import Affine
from typer.testing import CliRunner, Result

from p2p.app.cli import app
from p2p.bands.normalization import BandStats
from p2p.model.bundle import BundleMeta, write_bundle
from p2p.model.networks import UNetGenerator
from tests.rasters import ramp, write_geotiff

ROOT = Path(__file__).resolve().parents[1]
UTM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 1000000.0)
TINY_MODEL = {"num_downs": 2, "ngf": 4, "ndf": 4, "n_layers_d": 1, "norm": "batch", "dropout": 0.0}
#: Predict options that fit the tiny model (input multiple 4) and tiny scenes.
PREDICT_OPTS = ["--tile-size", "32", "--overlap", "4", "--format", "gtiff", "--device", "cpu"]


def write_tiny_bundle(model_dir: Path, in_bands: int = 2, seed: int = 0) -> Path:
    """A 2-level, 4-filter U-Net bundle (in_bands → 1 uint16 band)."""
    torch.manual_seed(seed)
    generator = UNetGenerator(in_bands, 1, num_downs=2, ngf=4, norm="batch", dropout=0.0)
    stats = BandStats(
        (500.0,) * in_bands, (200.0,) * in_bands, (0.0,) * in_bands, (3000.0,) * in_bands
    )
    meta = BundleMeta(
        model=TINY_MODEL,
        in_channels=in_bands,
        out_channels=1,
        source_bands=tuple(f"b{i + 1}" for i in range(in_bands)),
        target_bands=("t1",),
        source_stats=stats.to_dict(),
        target_stats=BandStats((900.0,), (300.0,), (0.0,), (4000.0,)).to_dict(),
        target_dtype="uint16",
        target_nodata=0.0,
        source_nodata=0.0,
        chip_size=32,
    )
    return write_bundle(model_dir, generator.eval(), meta)


def write_scene(
    path: Path,
    bands: int = 2,
    height: int = 64,
    width: int = 64,
    transform: Affine = UTM,
    nodata: float | None = 0,
    fill: int | None = None,
) -> Path:
    """A uint16 ramp scene (values ≥ 1, so nodata 0 marks nothing), or a constant `fill`."""
    data = ramp(bands, height, width) + 1
    if fill is not None:
        data = np.full_like(data, fill)
    return write_geotiff(path, data, transform=transform, nodata=nodata, blocksize=16)


def write_pair(folder: Path, size: int = 64, bands: int = 2) -> tuple[Path, Path]:
    """A training pair: `bands` source bands and one target band on the same 10 m grid."""
    folder.mkdir(parents=True, exist_ok=True)
    source = write_scene(folder / "src.tif", bands, size, size)
    yy, xx = np.mgrid[0:size, 0:size]
    target = (1000 + 300 * np.sin(xx / 7.0) * np.cos(yy / 11.0)).astype(np.uint16)[None]
    write_geotiff(folder / "tgt.tif", target, transform=UTM, nodata=0, blocksize=16)
    return source, folder / "tgt.tif"


#: The installed console script, what users run (beside this interpreter in the venv).
P2P = Path(sys.executable).with_name("p2p")


def cli(args: Sequence[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the installed `p2p` in a fresh process, stderr a pipe (not a terminal)."""
    return subprocess.run(
        [str(P2P), *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def unshare_works() -> bool:
    """Whether this machine lets a process mount its own tmpfs (user + mount namespaces), for
    tests against a really full or read-only disk."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1k tmpfs /mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


def cli_in_process(args: Sequence[str]) -> Result:
    """Run the `p2p` app in this process (for fault injection with monkeypatch only)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def cli_subprocess(
    args: Sequence[str], env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the `p2p` app from this checkout in a fresh process (for kills and Prefect runs)."""
    code = "import sys; from p2p.app.cli import main; sys.argv[0] = 'p2p'; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def assert_one_line_error(exit_code: int, stderr: str, *names: str | Path) -> str:
    """Non-zero exit, and the whole stderr is one line ``error: ...`` naming each of `names`
    (no traceback, no progress frame, no library log). Returns the line."""
    assert exit_code != 0, f"exit code 0; stderr: {stderr!r}"
    assert stderr.endswith("\n") and stderr.count("\n") == 1, f"not one line: {stderr!r}"
    line = stderr[:-1]
    assert line.startswith("error: "), line
    for name in names:
        assert str(name) in line, f"{name!s} not named in {line!r}"
    return line


def assert_failed_cleanly(
    result: subprocess.CompletedProcess[str] | Result, *names: str | Path
) -> str:
    """`assert_one_line_error` for a `cli` process (or an in-process `CliRunner` result)."""
    if isinstance(result, subprocess.CompletedProcess):
        return assert_one_line_error(result.returncode, result.stderr, *names)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {result.exception!r}") from result.exception
    return assert_one_line_error(result.exit_code, result.stderr, *names)


def leftovers(folder: Path) -> list[str]:
    """Every file under `folder` (hidden ones too), relative, sorted; [] when it is absent."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def finished_looking(folder: Path) -> list[str]:
    """Files a later run or a user would trust: manifests, and any non-hidden, non-lock file."""
    found = []
    for name in leftovers(folder):
        parts = Path(name).parts
        if parts[-1] == "manifest.json" or not any(re.match(r"^\.", p) for p in parts):
            found.append(name)
    return found


def yaml_config(path: Path, data: dict[str, Any]) -> Path:
    """Write a pipeline config file."""
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
