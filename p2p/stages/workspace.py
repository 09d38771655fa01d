"""See and prune a workspace: every stage folder, what made it, and which ones a config uses.

A workspace holds ``{stage}/{key}/`` folders, one per distinct set of settings and inputs, and
never removes one by itself. `list_folders` lists them (stage, key, size, age, complete or
partial, the settings that made each, and whether given configs would use it, through the
same plan as `p2p plan`); `prune` removes folders under each stage's lock — a file lock on a
disk, the lease object in a bucket — so a folder a running stage holds is skipped, never
removed beneath it. Only ``{workspace}/{known stage}/{16 hex digits}`` folders are ever
considered: nothing else in the workspace (Prefect's results, a user's files) and nothing
outside it (a symlinked folder) is touched.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout

from p2p.core import files, storage
from p2p.core.bucketlock import BucketLock
from p2p.core.cache import MANIFEST, bucket_lock_url, read_manifest
from p2p.core.config import PipelineConfig
from p2p.core.errors import InputError
from p2p.stages import dataset, evaluate, import_tiles, mosaic, predict, report, tile, train
from p2p.stages.plan import flatten

#: Stage folders p2p makes; any other folder in a workspace is not p2p's to list or remove.
STAGES = tuple(m.NAME for m in (import_tiles, tile, dataset, train, evaluate, predict, mosaic))
STAGES += (report.NAME,)
_KEY = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True)
class StageFolder:
    """One stage folder of a workspace.

    Attributes:
        stage: Stage name (``tile``, ``train``...).
        key: The stage key, also the folder's name.
        path: The folder (a URL in a bucket).
        bytes: Size of every file in it.
        modified: Newest file's modification time (seconds since the epoch).
        complete: Whether its manifest is there (a finished stage).
        settings: The settings that made it, in one line (empty while partial).
        used: Whether one of the given configs would use it.
    """

    stage: str
    key: str
    path: str
    bytes: int
    modified: float
    complete: bool
    settings: str
    used: bool = False

    def record(self) -> dict[str, Any]:
        """The `--json` view."""
        return {
            "stage": self.stage,
            "key": self.key,
            "path": self.path,
            "bytes": self.bytes,
            "modified": round(self.modified, 3),
            "complete": self.complete,
            "used": self.used,
            "settings": self.settings,
        }


def used_paths(configs: Sequence[PipelineConfig]) -> set[str]:
    """The stage folders the configs' training pipelines would use (their plans' folders)."""
    from p2p.stages.pipeline import TRAINING
    from p2p.stages.plan import plan

    return {e.record.path for c in configs for e in plan(TRAINING, c, c.workspace)}


def list_folders(workspace: str, used: Iterable[str] = ()) -> list[StageFolder]:
    """Every stage folder of `workspace`, by stage then newest first.

    Args:
        workspace: A folder or an ``s3://`` prefix.
        used: Folders to mark as used (`used_paths`).

    Raises:
        InputError: the workspace does not exist or cannot be listed.
    """
    sizes = _remote_sizes(workspace) if storage.is_remote(workspace) else _local_sizes(workspace)
    manifests = {path: read_manifest(path) for path in sizes}
    settings = _settings_lines(manifests)
    marked = set(used)
    found = [
        StageFolder(
            stage=stage,
            key=storage.name(path),
            path=path,
            bytes=size,
            modified=modified,
            complete=manifests[path] is not None,
            settings=settings.get(path, ""),
            used=path in marked,
        )
        for path, (stage, size, modified) in sizes.items()
    ]
    order = {name: i for i, name in enumerate(STAGES)}
    return sorted(found, key=lambda f: (order[f.stage], -f.modified))


def _local_sizes(workspace: str) -> dict[str, tuple[str, int, float]]:
    root = Path(workspace)
    if not root.is_dir():
        raise InputError(workspace, "no such workspace folder")
    found: dict[str, tuple[str, int, float]] = {}
    for stage in STAGES:
        for folder in sorted((root / stage).glob("*")):
            if _KEY.fullmatch(folder.name) and folder.is_dir() and _inside(root, folder):
                size, newest = 0, folder.stat().st_mtime
                for parent, _, names in os.walk(folder):
                    for name in names:
                        st = os.stat(os.path.join(parent, name))
                        size, newest = size + st.st_size, max(newest, st.st_mtime)
                found[str(folder)] = (stage, size, newest)
    return found


def _inside(root: Path, folder: Path) -> bool:
    """Whether `folder` really lies in the workspace (a symlink may point anywhere)."""
    return not folder.is_symlink() and folder.resolve().is_relative_to(root.resolve())


def _remote_sizes(workspace: str) -> dict[str, tuple[str, int, float]]:
    bucket, prefix = storage.split_url(workspace)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    found: dict[str, tuple[str, int, float]] = {}
    try:
        pages = (
            storage.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        items = [item for page in pages for item in page.get("Contents", [])]
    except Exception as exc:
        raise InputError(workspace, storage.problem(workspace, exc)) from None
    for item in items:
        parts = str(item["Key"])[len(prefix) :].split("/")
        if len(parts) < 3 or parts[0] not in STAGES or not _KEY.fullmatch(parts[1]):
            continue
        path = f"{storage.SCHEME}{bucket}/{prefix}{parts[0]}/{parts[1]}"
        _, size, newest = found.get(path, (parts[0], 0, 0.0))
        modified = item["LastModified"].timestamp()
        found[path] = (parts[0], size + int(item["Size"]), max(newest, modified))
    return found


def _settings_lines(manifests: dict[str, dict[str, Any] | None]) -> dict[str, str]:
    """One line per finished folder: the settings in which it differs from the other folders
    of its stage (all of them for a stage's only folder), as ``name=value``."""
    flat = {p: dict(flatten(m.get("config"))) for p, m in manifests.items() if m is not None}
    by_stage: dict[str, list[str]] = {}
    for path in flat:
        by_stage.setdefault(Path(path).parent.name, []).append(path)
    lines = {}
    for paths in by_stage.values():
        names = sorted({n for p in paths for n in flat[p]})
        varying = [n for n in names if len({repr(flat[p].get(n)) for p in paths}) > 1]
        for path in paths:
            shown = varying or [n for n in names if flat[path].get(n) is not None]
            lines[path] = ", ".join(f"{n}={_short(flat[path].get(n))}" for n in shown)
    return lines


def _short(value: Any) -> str:
    """A setting's value in few characters: a path by its file name."""
    if isinstance(value, list):
        return "[" + ",".join(_short(v) for v in value) + "]"
    if isinstance(value, str) and "/" in value:
        return value.rsplit("/", 1)[-1]
    return str(value)


def to_prune(folders: Sequence[StageFolder], keep: int = 0) -> list[StageFolder]:
    """The folders no config uses, less the `keep` newest of each stage (complete or not)."""
    kept: dict[str, int] = {}
    out = []
    for folder in folders:  # newest first within a stage
        if folder.used:
            continue
        if kept.get(folder.stage, 0) < keep:
            kept[folder.stage] = kept.get(folder.stage, 0) + 1
            continue
        out.append(folder)
    return out


Outcome = Literal["removed", "in use"]


def prune(workspace: str, folders: Sequence[StageFolder]) -> list[tuple[StageFolder, Outcome]]:
    """Remove `folders`, each under its stage lock; one a running stage holds is left.

    Raises:
        InputError: a folder does not lie in `workspace` (nothing is removed then).
    """
    for folder in folders:
        _check_inside(workspace, folder.path)
    outcomes: list[tuple[StageFolder, Outcome]] = []
    for folder in folders:
        remote = storage.is_remote(folder.path)
        done = _remove_remote(folder.path) if remote else _remove_local(Path(folder.path))
        outcomes.append((folder, "removed" if done else "in use"))
    return outcomes


def _check_inside(workspace: str, path: str) -> None:
    parent, name = path.rstrip("/").rsplit("/", 1)
    stage = parent.rsplit("/", 1)[-1]
    ok = stage in STAGES and _KEY.fullmatch(name) is not None
    if storage.is_remote(workspace):
        ok = ok and path.startswith(workspace.rstrip("/") + "/")
    else:
        ok = ok and _inside(Path(workspace), Path(path))
    if not ok:
        raise InputError(path, f"is not a stage folder of the workspace {workspace}; refused")


def _remove_local(folder: Path) -> bool:
    """Rename the folder away under its lock (so it is whole or gone), then delete it."""
    try:
        with FileLock(str(folder.parent / f".{folder.name}.lock"), timeout=0):
            if folder.is_dir():
                trash = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.pruned")
                folder.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)
    except Timeout:
        return False
    return True


def _remove_remote(url: str) -> bool:
    """Delete the manifest first (a half-deleted folder then reads as partial, never as
    finished), then every object, holding the stage's lease."""
    lock = BucketLock(bucket_lock_url(url))
    if not lock.try_acquire():
        return False
    try:
        bucket, key = storage.split_url(storage.join(url, MANIFEST))
        storage.client().delete_object(Bucket=bucket, Key=key)
        files.remove_tree(url)
    finally:
        lock.release()
    return True


def age(seconds_since: float, now: float | None = None) -> str:
    """A short age: ``40 s``, ``12 min``, ``5 h``, ``3 d``."""
    span = max(0.0, (time.time() if now is None else now) - seconds_since)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if span >= size:
            return f"{span // size:.0f} {unit}"
    return f"{span:.0f} s"


def human_bytes(size: float) -> str:
    """``512 B``, ``3.4 MB`` (powers of 1000, as `du --si`)."""
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"
