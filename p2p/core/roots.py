"""Allowed roots: paths that arrive as flow parameters must stay under configured folders.

A deployment triggered from the Prefect UI, the API or a schedule takes paths from whoever
fills the form. `P2P_ALLOWED_ROOTS` (folders separated by `os.pathsep`, set through the work
pool's job variables) bounds them: every path is resolved first (``..`` and symlinks
followed) and must then lie under one of the roots. Unset or empty means no restriction, for
local CLI use.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from p2p.core.errors import PathNotAllowedError

ENV_VAR = "P2P_ALLOWED_ROOTS"


def allowed_roots(value: str | None = None) -> list[Path]:
    """The resolved allowed roots, from `value` or the `P2P_ALLOWED_ROOTS` variable.

    Returns:
        The roots; an empty list means no restriction.
    """
    raw = os.environ.get(ENV_VAR, "") if value is None else value
    return [Path(part).expanduser().resolve() for part in raw.split(os.pathsep) if part.strip()]


def check_path(path: str | Path, roots: Iterable[Path] | None = None) -> Path:
    """Resolve `path` and check that it lies under an allowed root.

    Args:
        path: A file or folder path from a flow parameter; it need not exist yet.
        roots: Allowed roots; `allowed_roots()` when None. Empty means no restriction.

    Returns:
        The resolved absolute path.

    Raises:
        PathNotAllowedError: the resolved path is outside every root.
    """
    resolved = Path(path).expanduser().resolve()
    root_list = list(allowed_roots() if roots is None else roots)
    if not root_list or any(resolved.is_relative_to(root) for root in root_list):
        return resolved
    listed = os.pathsep.join(str(r) for r in root_list)
    raise PathNotAllowedError(
        path, f"resolves to {resolved}, outside the allowed roots ({ENV_VAR}={listed})"
    )
