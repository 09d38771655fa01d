"""Processes that use a bucket workspace against each other, for tests/test_bucket_workspace.py.

Run as ``python -m tests.bucket_worker MODE ...`` with the AWS environment pointing at the
test's S3 server:

- ``race WORKSPACE ROLE BARRIER``: run a stage whose build records itself as an object
  ``{WORKSPACE}/builds/{pid}``, meeting the other racer at its lock as ROLE (holder: waits
  inside until the rival has tried the lock; rival: tries once the holder is inside; see
  tests/lockbarrier.py); print the record as JSON.
- ``hold LOCK_URL LEASE_S``: take the bucket lock with a lease of LEASE_S seconds, print
  ``held``, hold it until it learns that the lease was lost, release it, print ``lost``.
- ``commit WORKSPACE GO WHO``: run a stage whose build writes ``who.txt`` = WHO, prints
  ``built`` and waits until the file GO exists (the test pauses it there, right before the
  commit); print the record as JSON, or ``refused: ...`` and exit 3 when p2p refused.
- ``tile WORKSPACE SOURCE TARGET KILL_AFTER``: tile the pair into the bucket workspace with
  a thread-based Dask cluster and SIGKILL this process once KILL_AFTER blocks are done.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from p2p.core import files
from p2p.core.bucketlock import BucketLock
from p2p.core.cache import KeyParts, run_stage
from p2p.core.config import DaskConfig, SceneConfig, TilingConfig
from p2p.core.errors import P2PError
from tests import lockbarrier

#: The tiling of the kill-and-resume test (4 x 4 blocks on a 64 px scene).
TILING = TilingConfig(chip_size=16, stride=8, block_chips=2, min_valid_fraction=0.5)
RACE_PARTS = KeyParts("race", 1, {"n": 1}, [])
COMMIT_PARTS = KeyParts("commit", 1, {"n": 1}, [])


def race(workspace: str, role: str, barrier: str) -> None:
    def build(folder: Any) -> dict[str, Any]:
        files.write_bytes(files.join(workspace, "builds", str(os.getpid())), b"built")
        return {"builder": os.getpid()}

    lockbarrier.install(role, barrier, RACE_PARTS.key)
    record = run_stage(workspace, RACE_PARTS, build)
    print(json.dumps({"pid": os.getpid(), "cached": record.cached, **record.summary}))


def hold(url: str, lease_s: float) -> None:
    lock = BucketLock(url, lease_s=lease_s)
    lock.acquire()
    print("held", flush=True)
    while not lock.lost:
        time.sleep(0.1)
    lock.release()  # must leave the new holder's lock alone
    print("lost", flush=True)


def build_who(who: str, go: Path | None = None) -> Any:
    """A stage build writing ``who.txt`` (waiting for the file `go` before it returns)."""

    def build(folder: Path) -> dict[str, Any]:
        (folder / "who.txt").write_text(who)
        print("built", flush=True)
        while go is not None and not go.exists():
            time.sleep(0.05)
        return {"who": who}

    return build


def commit(workspace: str, go: str, who: str) -> None:
    try:
        record = run_stage(workspace, COMMIT_PARTS, build_who(who, Path(go)))
    except P2PError as exc:
        print(f"refused: {exc}", flush=True)
        sys.exit(3)
    print(json.dumps(record.summary), flush=True)


def tile(workspace: str, source: str, target: str, kill_after: int) -> None:
    from p2p.stages.tile import run as tile_stage

    def progress(done: int, total: int) -> None:
        if done >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    scene = SceneConfig(source=[source], target=[target], nodata=0)
    dask = DaskConfig(n_workers=1, threads_per_worker=1)
    tile_stage(workspace, scene, TILING, dask, progress=progress)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "race":
        race(args[0], args[1], args[2])
    elif mode == "hold":
        hold(args[0], float(args[1]))
    elif mode == "commit":
        commit(args[0], args[1], args[2])
    elif mode == "tile":
        tile(args[0], args[1], args[2], int(args[3]))
    else:
        sys.exit(f"unknown mode {mode}; see {Path(__file__).name}")
