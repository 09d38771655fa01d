"""Allowed roots: paths that arrive as flow parameters must stay under configured folders.

A deployment triggered from the Prefect UI, the API or a schedule takes paths from whoever
fills the form. `P2P_ALLOWED_ROOTS` (folders separated by `os.pathsep`, set through the work
pool's job variables) bounds them: every path is resolved first (``..`` and symlinks
followed) and must then lie under one of the roots, and the resolved path is what the run
uses from then on (a symlink swapped after the check cannot redirect it). Unset or empty means
no restriction, for local CLI use; a flow run that comes from a deployment asks for the roots
with `required=True` and refuses to start without them (fail closed). A root may also be an
object-storage prefix (``s3://bucket/prefix``); a URL is allowed only under such a root, and
never with ``.`` or ``..`` segments.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from p2p.core import storage, transfer
from p2p.core.config import BatchPredictConfig, PipelineConfig, SceneConfig
from p2p.core.configfile import expand_scenes, map_scene_paths
from p2p.core.errors import ConfigError, InputError, PathNotAllowedError

ENV_VAR = "P2P_ALLOWED_ROOTS"


def allowed_roots(value: str | None = None, required: bool = False) -> list[Path | str]:
    """The resolved allowed roots, from `value` or the `P2P_ALLOWED_ROOTS` variable.

    Args:
        value: Roots separated by `os.pathsep`; the environment variable when None.
        required: Refuse an empty list (paths come from whoever triggers a deployment).

    Returns:
        The roots (folders as resolved paths, URL prefixes as text); an empty list (only when
        not `required`) means no restriction.

    Raises:
        PathNotAllowedError: `required` and no root is set.
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
    if required and not roots:
        raise PathNotAllowedError(
            ENV_VAR,
            "unset, and this flow run comes from a deployment, whose paths come from whoever "
            "triggers it: set it to the data and workspace folders (work pool job variables)",
        )
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


def check_bucket_workspace(config: PipelineConfig) -> None:
    """Refuse, before any work, a workspace bucket that is missing or unreachable, and what a
    workspace on object storage cannot hold: training on several machines (their ranks meet
    through files in the train stage's local folder, which a bucket workspace stages on one
    machine only).

    Raises:
        ConfigError: `config` trains on several nodes in an ``s3://`` workspace.
        OutputError: no credentials, no such bucket or access denied.
    """
    if not storage.is_remote(config.workspace):
        return
    transfer.check_writable(config.workspace)
    if config.train.nodes > 1:
        raise ConfigError(
            "train.nodes",
            f"{config.train.nodes} machines cannot train in a workspace on object storage "
            f"({config.workspace}); use a shared folder, or train.nodes: 1",
        )


def checked_pipeline_config(config: PipelineConfig, require_roots: bool = False) -> PipelineConfig:
    """Resolve the workspace and every scene path, each under `P2P_ALLOWED_ROOTS`.

    Args:
        config: The flow's parameter.
        require_roots: Refuse to run without allowed roots (a flow run from a deployment).

    Returns:
        The config with every path replaced by its checked, resolved form.

    Raises:
        PathNotAllowedError: a path resolves outside the allowed roots, or no roots are set
            and they are required.
        InputError: the config names no scene.
    """
    roots = allowed_roots(required=require_roots)
    check_bucket_workspace(config)
    if not config.scenes:
        raise InputError("scenes", "the training pipeline needs at least one scene pair")
    scenes = [map_scene_paths(s, lambda p: str(check_path(p, roots))) for s in config.scenes]
    workspace = str(check_path(config.workspace, roots))
    return config.model_copy(update={"workspace": workspace, "scenes": scenes})


def checked_batch_config(
    config: BatchPredictConfig, require_roots: bool = False
) -> tuple[BatchPredictConfig, list[SceneConfig]]:
    """Resolve and check the batch paths under the allowed roots, and expand the scenes.

    Patterns are checked and resolved before they are expanded (a pattern outside the roots
    never lists a folder) and every match again after (a symlink inside a root may point
    outside); the returned config and scenes hold the resolved paths, the ones checked.

    Args:
        config: The flow's parameter.
        require_roots: Refuse to run without allowed roots (a flow run from a deployment).

    Raises:
        PathNotAllowedError: a path resolves outside the allowed roots, or no roots are set
            and they are required.
        InputError: a pattern matches nothing, a file is missing, or two scenes share an id.
    """
    roots = allowed_roots(required=require_roots)
    entries = [
        ",".join(str(check_path(part.strip(), roots)) for part in entry.split(","))
        for entry in config.scenes
    ]
    for ref in config.items:
        if "://" not in ref.stac or storage.is_remote(ref.stac):
            check_path(ref.stac, roots)  # the STAC JSON too, before it is read
    scenes = [
        scene.model_copy(update={"source": [str(check_path(f, roots)) for f in scene.source]})
        for scene in expand_scenes(entries, config.predict.nodata, config.items)
    ]
    checked = config.model_copy(
        update={
            "workspace": str(check_path(config.workspace, roots)),
            "model": str(check_path(config.model, roots)),
            "output": str(check_path(config.output, roots)),
            "scenes": entries,
        }
    )
    return checked, scenes
