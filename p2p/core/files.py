"""Workspace files on a local disk or in a bucket, behind one set of verbs.

A workspace (and so every stage folder in it) may be a local folder or an ``s3://`` prefix.
The verbs here take either: a whole-file write is atomic on both (a renamed temporary file on
a disk; one PUT on a bucket, which readers see whole or not at all), a missing file reads as
None, listing a folder lists its files' names. A Zarr store opens through zarr's `LocalStore`
or its `ObjectStore` over obstore, configured with the same credentials and endpoint as every
other S3 call (`p2p.core.storage`).

What object storage cannot do is refused, not emulated: there is no rename (a stage folder in
a bucket is never moved), no memory map and no append.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path
from typing import Any

from p2p.core import storage, transfer
from p2p.core.errors import InputError, OutputError
from p2p.core.fsutil import atomic_write_bytes, json_text

#: A local folder or file, or an ``s3://`` URL.
Location = str | Path


def join(base: Location, *parts: str) -> Location:
    """`parts` below `base`: a Path for a local base, a URL for a remote one."""
    if storage.is_remote(base):
        return storage.join(base, *parts)
    return Path(base, *parts)


def read_bytes(path: Location) -> bytes | None:
    """A whole file's bytes, or None when it does not exist.

    Raises:
        InputError: the object store refused the read (credentials, bucket, access).
    """
    if not storage.is_remote(path):
        p = Path(path)
        return p.read_bytes() if p.is_file() else None
    from botocore.exceptions import ClientError

    bucket, key = storage.split_url(str(path))
    try:  # one GET, no HEAD first: a missing key answers NoSuchKey
        return bytes(storage.client().get_object(Bucket=bucket, Key=key)["Body"].read())
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchKey":
            return None
        raise InputError(path, storage.problem(str(path), exc)) from None
    except Exception as exc:
        raise InputError(path, storage.problem(str(path), exc)) from None


def read_json(path: Location) -> Any:
    """A JSON file's value, or None when the file does not exist."""
    data = read_bytes(path)
    return None if data is None else json.loads(data)


def exists(path: Location) -> bool:
    """Whether a file (an object) exists at `path`."""
    if storage.is_remote(path):
        return storage.head(str(path)) is not None
    return Path(path).is_file()


def write_bytes(path: Location, data: bytes, exclusive: bool = False) -> None:
    """Write a whole file atomically (a renamed temporary file, or one PUT).

    Args:
        path: Where.
        data: The whole content.
        exclusive: In a bucket, create the object only where none exists (``If-None-Match:
            *``, checked by the store itself); on a disk the caller's lock serves.

    Raises:
        OutputError: the object store refused the write, or (`exclusive`) the object exists.
    """
    if not storage.is_remote(path):
        atomic_write_bytes(path, data)
        return
    bucket, key = storage.split_url(str(path))
    condition = {"IfNoneMatch": "*"} if exclusive else {}
    try:
        storage.client().put_object(Bucket=bucket, Key=key, Body=data, **condition)
    except Exception as exc:
        if exclusive and hasattr(exc, "response") and storage.http_status(exc) in (409, 412):
            raise OutputError(path, "another run wrote it first; nothing was replaced") from None
        raise OutputError(path, storage.problem(str(path), exc)) from None


def write_json(path: Location, obj: Any, exclusive: bool = False) -> None:
    """Write `obj` as indented strict JSON (`p2p.core.fsutil.finite`), atomically."""
    write_bytes(path, json_text(obj).encode("utf-8"), exclusive)


def _keys(url: str) -> list[str]:
    """Every key under the folder `url` (recursively)."""
    bucket, key = storage.split_url(url)
    prefix = key.rstrip("/") + "/"
    keys: list[str] = []
    try:
        pages = (
            storage.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        for page in pages:
            keys.extend(str(item["Key"]) for item in page.get("Contents", []))
    except Exception as exc:
        raise InputError(url, storage.problem(url, exc)) from None
    return [k[len(prefix) :] for k in keys]


def names(folder: Location, pattern: str = "*") -> list[str]:
    """Sorted names of the files directly in `folder` that match `pattern` (a glob)."""
    if storage.is_remote(folder):
        found = [k for k in _keys(str(folder)) if "/" not in k]
    else:
        p = Path(folder)
        found = [c.name for c in p.iterdir() if c.is_file()] if p.is_dir() else []
    return sorted(n for n in found if fnmatch.fnmatchcase(n, pattern))


def has_files(folder: Location) -> bool:
    """Whether anything is stored under `folder` (an unfinished stage folder, say)."""
    if storage.is_remote(folder):
        bucket, key = storage.split_url(str(folder))
        try:
            listing = storage.client().list_objects_v2(
                Bucket=bucket, Prefix=key.rstrip("/") + "/", MaxKeys=1
            )
        except Exception as exc:
            raise InputError(folder, storage.problem(str(folder), exc)) from None
        return bool(listing.get("KeyCount", 0))
    return Path(folder).is_dir()


def remove_tree(folder: Location) -> None:
    """Delete `folder` and everything under it (nothing when absent)."""
    if not storage.is_remote(folder):
        shutil.rmtree(folder, ignore_errors=True)
        return
    bucket, key = storage.split_url(str(folder))
    keys = [f"{key.rstrip('/')}/{k}" for k in _keys(str(folder))]
    for lo in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
        batch = [{"Key": k} for k in keys[lo : lo + 1000]]
        storage.client().delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})


def upload_tree(local: Path, url: str, last: str | None = None) -> None:
    """Upload every file under `local` to the same relative keys under `url`; `last` (a name
    directly in `local`) goes last, so a reader that waits for it sees everything else."""
    files = sorted(p for p in local.rglob("*") if p.is_file())
    ordered = [p for p in files if p.name != last or p.parent != local]
    ordered += [p for p in files if p not in ordered]
    for path in ordered:
        transfer.upload(path, storage.join(url, *path.relative_to(local).parts))


def relocate(value: Any, old: str, new: str) -> Any:
    """`value` (JSON-like) with every string that is `old` or a path below it moved to `new`."""
    if isinstance(value, str) and (value == old or value.startswith(old + "/")):
        return new + value[len(old) :]
    if isinstance(value, dict):
        return {k: relocate(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [relocate(v, old, new) for v in value]
    return value


def zarr_store(path: Location, read_only: bool = False) -> Any:
    """A zarr v3 store at `path`: a `LocalStore`, or an `ObjectStore` (obstore) on a bucket."""
    from zarr.storage import LocalStore, ObjectStore

    if not storage.is_remote(path):
        return LocalStore(str(path), read_only=read_only)
    from obstore.store import S3Store

    bucket, key = storage.split_url(str(path))
    return ObjectStore(
        S3Store(bucket, prefix=key, **storage.obstore_options(str(path))), read_only=read_only
    )
