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

from p2p.core.config import (
    BatchPredictConfig,
    PipelineConfig,
    SceneConfig,
    expand_scenes,
    map_scene_paths,
)
from p2p.core.errors import InputError, PathNotAllowedError

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


def checked_pipeline_config(config: PipelineConfig) -> PipelineConfig:
    """Resolve the workspace and every scene path, each under `P2P_ALLOWED_ROOTS`.

    Raises:
        PathNotAllowedError: a path resolves outside the allowed roots.
        InputError: the config names no scene.
    """
    roots = allowed_roots()
    if not config.scenes:
        raise InputError("scenes", "the training pipeline needs at least one scene pair")
    scenes = [map_scene_paths(s, lambda p: str(check_path(p, roots))) for s in config.scenes]
    workspace = str(check_path(config.workspace, roots))
    return config.model_copy(update={"workspace": workspace, "scenes": scenes})


def checked_batch_config(
    config: BatchPredictConfig,
) -> tuple[BatchPredictConfig, list[SceneConfig]]:
    """Resolve and check the batch paths under the allowed roots, and expand the scenes.

    Patterns are checked before they are expanded (a pattern outside the roots never lists a
    folder) and every match again after (a symlink inside a root may point outside).
    """
    roots = allowed_roots()
    for entry in config.scenes:
        for part in entry.split(","):
            check_path(part.strip(), roots)
    scenes = expand_scenes(config.scenes, config.predict.nodata)
    for scene in scenes:
        for f in scene.source:
            check_path(f, roots)
    checked = config.model_copy(
        update={
            "workspace": str(check_path(config.workspace, roots)),
            "model": str(check_path(config.model, roots)),
            "output": str(check_path(config.output, roots)),
        }
    )
    return checked, scenes
