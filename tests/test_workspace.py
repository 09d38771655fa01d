"""`p2p workspace ls` and `prune` through the installed CLI: what a config uses stays, what no
config uses goes, a folder a running stage holds (its lock held by another process) survives,
and the same on an ``s3://`` workspace of the moto server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p2p.core.bucketlock import BucketLock
from p2p.core.cache import KeyParts, bucket_lock_url, run_stage
from p2p.core.configfile import load_config
from p2p.stages.pipeline import TRAINING
from p2p.stages.plan import plan
from tests.faultkit import cli, write_pair, yaml_config

STALE = KeyParts("train", 1, {"train": {"epochs": 3}}, [])
OTHER = KeyParts("train", 1, {"train": {"epochs": 7}}, [])
PARTIAL = "0123456789abcdef"
RUNNING = "fedcba9876543210"


def _config(tmp_path: Path, workspace: str) -> Path:
    source, target = write_pair(tmp_path / "data")
    return yaml_config(
        tmp_path / "config.yaml",
        {
            "workspace": workspace,
            "scenes": [{"source": str(source), "target": str(target)}],
            "tiling": {"chip_size": 32, "stride": 32},
            "model": {"num_downs": 2, "ngf": 4, "ndf": 4},
        },
    )


def _tile_key(config: Path) -> str:
    cfg = load_config(config)
    return next(
        e.record.key for e in plan(TRAINING, cfg, cfg.workspace) if e.label.startswith("tile")
    )


def _build(parts: KeyParts, workspace: str) -> str:
    def write(folder: Path) -> dict[str, Any]:
        (folder / "weights.bin").write_bytes(b"\0" * 2000)
        return {}

    return run_stage(workspace, parts, write).path


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Any]:
    """Another process holding a stage's file lock, as a running stage does."""
    procs: list[subprocess.Popen[str]] = []

    def hold(lock: Path) -> None:
        code = (
            "import sys, time; from filelock import FileLock; l = FileLock(sys.argv[1]); "
            "l.acquire(); print('held', flush=True); time.sleep(120)"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True
        )
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


def test_prune_keeps_what_a_config_uses_and_what_a_running_stage_holds(
    tmp_path: Path, holder: Any
) -> None:
    ws = tmp_path / "ws"
    config = _config(tmp_path, str(ws))
    tile_key = _tile_key(config)
    Path(_build(KeyParts("tile", 0, {}, []), str(ws))).rename(ws / "tile" / tile_key)
    (ws / "train" / PARTIAL).mkdir(parents=True)
    (ws / "train" / PARTIAL / "part.bin").write_bytes(b"\0" * 10)
    stale, other = _build(STALE, str(ws)), _build(OTHER, str(ws))
    for age, folder in enumerate([other, stale, ws / "train" / PARTIAL]):
        for path in [*Path(folder).rglob("*"), Path(folder)]:
            os.utime(path, (1e9 - 3600 * age, 1e9 - 3600 * age))  # PARTIAL oldest
    (ws / "dataset" / RUNNING).mkdir(parents=True)
    holder(ws / "dataset" / f".{RUNNING}.lock")

    listing = json.loads(cli(["workspace", "ls", config, "--json"]).stdout.splitlines()[-1])
    rows = {(f["stage"], f["key"]): f for f in listing["folders"]}
    assert rows[("tile", tile_key)]["used"] is True
    assert rows[("train", STALE.key)]["complete"] and not rows[("train", STALE.key)]["used"]
    assert rows[("train", STALE.key)]["settings"] == "train.epochs=3"
    assert rows[("train", PARTIAL)]["complete"] is False
    assert rows[("train", STALE.key)]["bytes"] > 2000

    dry = cli(["workspace", "prune", config])
    assert dry.returncode == 0, dry.stderr
    assert Path(stale).is_dir() and "--yes to do it" in dry.stdout

    # the newest unused folder of each stage stays (--keep 1); the older train folders go
    assert _pruned(config, "--keep", "1") == {STALE.key: "removed", PARTIAL: "removed"}
    assert Path(other).is_dir() and not Path(stale).exists()
    # without --keep: the last train folder goes, the dataset folder a run holds stays
    assert _pruned(config) == {OTHER.key: "removed", RUNNING: "in use"}
    assert (ws / "dataset" / RUNNING).is_dir()
    assert (ws / "tile" / tile_key).is_dir()
    assert [p.name for p in (ws / "train").iterdir() if not p.name.startswith(".")] == []


def _pruned(config: Path, *options: str) -> dict[str, str]:
    done = cli(["workspace", "prune", config, *options, "--yes", "--json"])
    assert done.returncode == 0, done.stderr
    return {r["key"]: r["outcome"] for r in json.loads(done.stdout.splitlines()[-1])["folders"]}


def test_prune_in_a_bucket(tmp_path: Path, s3: Any) -> None:
    ws = s3.url("ws")
    config = _config(tmp_path, ws)
    used = f"ws/tile/{_tile_key(config)}"
    s3.client().put_object(Bucket=s3.bucket, Key=f"{used}/manifest.json", Body=b'{"config": {}}')
    stale = _build(STALE, ws)
    s3.client().put_object(Bucket=s3.bucket, Key=f"ws/dataset/{RUNNING}/part", Body=b"x")
    s3.client().put_object(Bucket=s3.bucket, Key="ws/notes.txt", Body=b"mine")
    with BucketLock(bucket_lock_url(s3.url(f"ws/dataset/{RUNNING}")), lease_s=60):
        outcome = _pruned(config)
    assert outcome == {STALE.key: "removed", RUNNING: "in use"}
    assert s3.keys(s3.bucket, stale.removeprefix(f"s3://{s3.bucket}/")) == []
    assert s3.keys(s3.bucket, f"{used}/") == [f"{used}/manifest.json"]
    assert s3.keys(s3.bucket, "ws/notes.txt") == ["ws/notes.txt"]
    assert s3.keys(s3.bucket, f"ws/dataset/{RUNNING}/") == [f"ws/dataset/{RUNNING}/part"]
