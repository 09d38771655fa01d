"""Stage keys, manifests and locks: how every stage caches and resumes its artifacts.

A stage's key is the sha256 of its name, format version, config and input fingerprints. Its
artifacts live in ``{workspace}/{stage}/{key}/``; ``manifest.json`` is written there last and
atomically. A folder with a manifest is finished and returned at once; a folder without one is
unfinished and the stage resumes it. Concurrent runs take a per-key file lock.

The workspace may be an ``s3://`` prefix. Each stage folder is then a prefix of objects, the
manifest one object put last, and the lock a lease object made by conditional put
(`p2p.core.bucketlock`), which holds across machines. A stage whose engine writes into object
storage itself (tiling's Zarr store, from Dask workers) builds there in place; any other is
built in a local staging folder (one per stage folder, so a killed run resumes there on the
same machine) and uploaded whole before its manifest.

Each stage (`p2p.stages`) declares its key as `KeyParts`; `run_stage`, the plan and the
Prefect tasks all derive the key and folder from those parts, so they agree by construction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field

from p2p.core import files, storage, transfer
from p2p.core.bucketlock import BucketLock
from p2p.core.errors import StageError
from p2p.core.fsutil import sha256_file

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
#: Observers of `run_stage`'s lock, empty in normal runs: ``"trying"`` is called with the
#: stage folder right before the lock is taken, ``"locked"`` inside the critical section once
#: the manifest was looked for. Concurrency tests hold one run inside the section until a
#: rival has tried the lock, so a missing lock fails them every time, not when unlucky.
LOCK_HOOKS: dict[str, Callable[[files.Location], None]] = {}
KEY_LENGTH = 16
TEMP_NAME = re.compile(r"\..+\.[^.]+\.tmp(\.\w+)?")


class StageRecord(BaseModel):
    """What a stage returns: where its artifacts are and a small summary (never arrays)."""

    model_config = ConfigDict(frozen=True)

    stage: str = Field(description="Stage name, e.g. 'tile'.")
    key: str = Field(description="Stage key (hex), also the artifact folder's name.")
    path: str = Field(description="Artifact folder.")
    cached: bool = Field(description="True when a finished manifest was found and reused.")
    seconds: float = Field(description="Wall time of this call.")
    summary: dict[str, Any] = Field(default_factory=dict, description="Counts, metrics, paths.")


class KeyParts(NamedTuple):
    """What a stage run's key is made of; a stage computes these once, from its arguments."""

    stage: str
    version: int
    config: Any
    inputs: Sequence[str]

    @property
    def key(self) -> str:
        """The stage key (hex), also the artifact folder's name."""
        return stage_key(self.stage, self.version, self.config, self.inputs)

    def folder(self, workspace: str | Path) -> files.Location:
        """The artifact folder of this run in `workspace`."""
        return stage_dir(workspace, self.stage, self.key)


def fingerprint_file(path: str | Path, strict: bool = False) -> str:
    """Fingerprint a user file: resolved path + size + mtime, or a content hash when `strict`.

    An ``s3://`` object's is its URL + size + ETag (`storage.fingerprint`).
    """
    if storage.is_remote(path):
        return storage.fingerprint(str(path), strict)
    p = Path(path).resolve()
    st = p.stat()
    if strict:
        return f"sha256:{sha256_file(p)}"
    return f"{p}:{st.st_size}:{st.st_mtime_ns}"


def canonical(obj: Any) -> Any:
    """A config as it is keyed and stored in a manifest (a pydantic model as JSON data)."""
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    return obj


def stage_key(stage: str, version: int, config: Any = None, inputs: Sequence[str] = ()) -> str:
    """Return the cache key of a stage run.

    Args:
        stage: Stage name.
        version: The stage's artifact format version; bump it when the format changes.
        config: The stage's config (a pydantic model or JSON-able value).
        inputs: Fingerprints of the inputs: upstream stage keys or `fingerprint_file` values.
    """
    payload = json.dumps(
        {"stage": stage, "version": version, "config": canonical(config), "inputs": list(inputs)},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:KEY_LENGTH]


def stage_dir(workspace: str | Path, stage: str, key: str) -> files.Location:
    """The artifact folder of a stage run (a URL in a workspace on object storage)."""
    return files.join(workspace, stage, key)


def read_manifest(folder: files.Location) -> dict[str, Any] | None:
    """The manifest of a finished stage folder, or None when the folder is unfinished."""
    data = files.read_json(files.join(folder, MANIFEST))
    return data if isinstance(data, dict) else None


def write_manifest(
    folder: files.Location, manifest: dict[str, Any], exclusive: bool = False
) -> None:
    """Write the manifest last and atomically: from now on the folder counts as finished.

    Args:
        folder: The stage folder.
        manifest: Its content.
        exclusive: Create it only where none exists (in a bucket: ``If-None-Match: *``).
    """
    files.write_json(files.join(folder, MANIFEST), manifest, exclusive=exclusive)


def stage_lock(folder: str | Path) -> FileLock:
    """A file lock for one stage key, held while the stage builds its (local) folder."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder.parent / f".{folder.name}.lock"))


def bucket_lock_url(folder: str) -> str:
    """The lease object that locks a stage folder in a bucket: ``{stage}/.{key}.lock``."""
    name = storage.name(folder)
    return f"{folder.rstrip('/')[: -len(name)]}.{name}.lock"


@contextmanager
def _locked(folder: files.Location) -> Iterator[BucketLock | None]:
    """Hold the stage's lock: a file lock on a disk, a lease object in a bucket."""
    if storage.is_remote(folder):
        with BucketLock(bucket_lock_url(str(folder))) as lease:
            yield lease
    else:
        with stage_lock(folder):
            yield None


def _notify(event: str, folder: files.Location) -> None:
    hook = LOCK_HOOKS.get(event)
    if hook is not None:
        hook(folder)


def _sweep_temporaries(folder: Path) -> None:
    """Delete temporary files and folders a killed writer left (`p2p.core.fsutil.atomic_path` and
    `p2p.model.bundle` name them ``.NAME.<random>.tmp[.ext]``). Safe: the caller holds the stage
    lock, so no writer is live."""
    for path in sorted(folder.rglob(".*.tmp*")):
        if not TEMP_NAME.fullmatch(path.name) or not path.exists():
            continue  # not ours, or inside a temporary folder removed just before
        log.info("removing a killed run's temporary %s", path)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def run_stage(
    workspace: str | Path,
    parts: KeyParts,
    build: Callable[[Path], dict[str, Any]],
    build_in_bucket: Callable[[str], dict[str, Any]] | None = None,
) -> StageRecord:
    """Run a stage once per key: return a finished folder at once, else build or resume it.

    Args:
        workspace: Workspace root (a folder or an ``s3://`` prefix).
        parts: The stage's key parts (name, format version, config, input fingerprints).
        build: Called with the (possibly partly filled) local artifact folder; must resume
            what is there and return the JSON-able summary stored in the manifest. In a
            workspace on object storage the folder is a local staging folder, uploaded whole
            afterwards; paths under it in the summary are moved to the stage's URL.
        build_in_bucket: For a workspace on object storage, a build that writes into the
            stage's URL itself (and resumes what is there) instead of a staging folder.
    """
    start = time.perf_counter()
    stage, version, config, inputs = parts
    key = parts.key
    folder = stage_dir(workspace, stage, key)
    _notify("trying", folder)
    with _locked(folder) as lease:
        manifest = read_manifest(folder)
        _notify("locked", folder)
        cached = manifest is not None
        if manifest is None:
            log.info("%s: building %s", stage, folder)
            summary, staging = _build(folder, build, build_in_bucket, lease)
            manifest = {
                "stage": stage,
                "version": version,
                "key": key,
                "config": canonical(config),
                "inputs": list(inputs),
                "summary": summary,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "seconds": round(time.perf_counter() - start, 3),
            }
            if lease is not None:  # a run that lost its lease must not commit
                manifest["fence"] = lease.fence()
            write_manifest(folder, manifest, exclusive=lease is not None)
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
        else:
            log.info("%s: cached at %s", stage, folder)
    return StageRecord(
        stage=stage,
        key=key,
        path=str(folder),
        cached=cached,
        seconds=round(time.perf_counter() - start, 3),
        summary=manifest.get("summary", {}),
    )


def _build(
    folder: files.Location,
    build: Callable[[Path], dict[str, Any]],
    build_in_bucket: Callable[[str], dict[str, Any]] | None,
    lease: BucketLock | None = None,
) -> tuple[dict[str, Any], Path | None]:
    """Build a stage folder; the summary and the staging folder to remove once committed.

    In a bucket, a staging folder is uploaded only after `lease` is fenced: a holder that
    was paused past its lease must not overwrite the objects of the run that took over.
    """
    if not storage.is_remote(folder):
        local = Path(folder)
        local.mkdir(parents=True, exist_ok=True)
        _sweep_temporaries(local)
        return build(local), None
    url = str(folder)
    if build_in_bucket is not None:
        return build_in_bucket(url), None
    staging = transfer.staging_dir(url)
    staging.mkdir(parents=True, exist_ok=True)
    _sweep_temporaries(staging)
    summary = build(staging)
    if lease is not None:
        lease.fence()
    files.upload_tree(staging, url)
    return files.relocate(summary, str(staging), url), staging


def finished_stage(stage_or_dir: StageRecord | str | Path) -> StageRecord:
    """A finished stage as a record: given one, or read from a stage folder's manifest.

    Raises:
        StageError: the folder has no manifest (the stage is unfinished or never ran).
    """
    if isinstance(stage_or_dir, StageRecord):
        return stage_or_dir
    folder = stage_or_dir if storage.is_remote(stage_or_dir) else Path(stage_or_dir)
    manifest = read_manifest(folder)
    if manifest is None:
        raise StageError(folder, "no manifest.json: this stage has not finished; run it first")
    return StageRecord(
        stage=manifest["stage"],
        key=manifest["key"],
        path=str(folder),
        cached=True,
        seconds=0.0,
        summary=manifest.get("summary", {}),
    )
