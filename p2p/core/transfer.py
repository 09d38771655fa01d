"""Whole objects to and from a bucket (`p2p.core.storage` for URLs, clients and errors):
uploads that readers see complete or not at all, downloads, an upload skipped when the object
holds the same bytes, a writability check before any work, and the local staging folder where
what goes to a bucket is built."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from p2p.core.errors import InputError, OutputError
from p2p.core.fsutil import sha256_file
from p2p.core.storage import client, head, problem, split_url


def upload(local: Path, url: str, metadata: dict[str, str] | None = None) -> None:
    """Upload a complete local file as one object (readers see all of it or nothing).

    Args:
        local: The finished file.
        url: ``s3://bucket/key``.
        metadata: User metadata stored with the object.

    Raises:
        OutputError: the upload failed (one line naming `url` and why).
    """
    bucket, key = split_url(url)
    extra = {"Metadata": metadata} if metadata else None
    try:
        client().upload_file(str(local), bucket, key, ExtraArgs=extra)
    except Exception as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        raise OutputError(url, problem(url, cause)) from None


def download(url: str, local: Path) -> None:
    """Download a whole object to a local file.

    Raises:
        InputError: the object cannot be read (one line naming `url` and why).
    """
    bucket, key = split_url(url)
    try:
        client().download_file(bucket, key, str(local))
    except Exception as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        raise InputError(url, problem(url, cause)) from None


def upload_if_changed(local: Path, url: str) -> bool:
    """Upload `local` to `url` unless the object there was uploaded from the same bytes (its
    sha256 travels as object metadata; an ETag is no content hash for multipart uploads).

    Returns:
        True when the object was (re)written.
    """
    digest = sha256_file(local)
    try:
        current = head(url)
    except InputError as exc:
        raise OutputError(url, exc.problem) from None
    if current is not None and current.get("Metadata", {}).get("sha256") == digest:
        return False
    upload(local, url, {"sha256": digest})
    return True


def check_writable(url: str) -> None:
    """Fail before any work when `url`'s bucket is missing or unreachable.

    Raises:
        OutputError: no credentials, no such bucket or access denied.
    """
    bucket, _ = split_url(url)
    if not bucket:
        raise OutputError(url, "no bucket in the URL; use s3://bucket/key")
    try:
        client().head_bucket(Bucket=bucket)
    except Exception as exc:
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") == "404":
            raise OutputError(url, f"no such bucket {bucket!r}") from None
        raise OutputError(url, problem(url, exc)) from None


def staging_dir(url: str) -> Path:
    """A local folder for building what will be uploaded to `url` (e.g. `p2p predict`'s
    workspace); the same for a rerun, so an interrupted build resumes there."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "p2p-staging" / digest
