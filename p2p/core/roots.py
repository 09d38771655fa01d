"""Allowed roots: paths that arrive as flow parameters must stay under configured folders.

A deployment triggered from the Prefect UI, the API or a schedule takes paths from whoever
fills the form. `P2P_ALLOWED_ROOTS` (folders separated by `os.pathsep`, set through the work
pool's job variables) bounds them: every path is resolved first (``..`` and symlinks
followed) and must then lie under one of the roots. Unset or empty means no restriction, for
local CLI use. A root may also be an object-storage prefix (``s3://bucket/prefix``); a URL is
allowed only under such a root, and never with ``.`` or ``..`` segments.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from p2p.core import storage
from p2p.core.errors import PathNotAllowedError

ENV_VAR = "P2P_ALLOWED_ROOTS"


def allowed_roots(value: str | None = None) -> list[Path | str]:
    """The resolved allowed roots, from `value` or the `P2P_ALLOWED_ROOTS` variable.

    Returns:
        The roots (folders as resolved paths, URL prefixes as text); an empty list means no
        restriction.
    """
    raw = os.environ.get(ENV_VAR, "") if value is None else value
    parts = [part.strip() for part in raw.split(os.pathsep)]
    roots: list[Path | str] = []
    while parts:
        part = parts.pop(0)
        if part == storage.SCHEME.rstrip(":/") and parts and parts[0].startswith("//"):
            # os.pathsep is ":" on POSIX, which also splits "s3://bucket" in two
            roots.append(f"{part}:{parts.pop(0)}".rstrip("/"))
        elif part:
            roots.append(Path(part).expanduser().resolve())
    return roots


def _check_url(url: str, roots: list[Path | str]) -> str:
    segments = url[len(storage.SCHEME) :].split("/")
    if roots and any(seg in (".", "..") for seg in segments):
        raise PathNotAllowedError(url, "a URL under allowed roots may not hold . or .. parts")
    prefixes = [r for r in roots if isinstance(r, str)]
    if not roots or any(url == r or url.startswith(r + "/") for r in prefixes):
        return url
    listed = os.pathsep.join(str(r) for r in roots)
    raise PathNotAllowedError(url, f"is outside the allowed roots ({ENV_VAR}={listed})")


def check_path(path: str | Path, roots: Iterable[Path | str] | None = None) -> Path | str:
    """Resolve `path` and check that it lies under an allowed root.

    Args:
        path: A file or folder path from a flow parameter; it need not exist yet.
        roots: Allowed roots; `allowed_roots()` when None. Empty means no restriction.

    Returns:
        The resolved absolute path (a URL unchanged).

    Raises:
        PathNotAllowedError: the resolved path is outside every root.
    """
    root_list = list(allowed_roots() if roots is None else roots)
    if storage.is_remote(path):
        return _check_url(str(path), root_list)
    resolved = Path(path).expanduser().resolve()
    folders = [root for root in root_list if isinstance(root, Path)]
    if not root_list or any(resolved.is_relative_to(root) for root in folders):
        return resolved
    listed = os.pathsep.join(str(r) for r in root_list)
    raise PathNotAllowedError(
        path, f"resolves to {resolved}, outside the allowed roots ({ENV_VAR}={listed})"
    )
