"""Config files and scene lists: YAML → `PipelineConfig` with ``--set`` overrides, paths made
absolute against the config file's folder, and batch entries (globs, band lists, STAC items)
expanded into scenes.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from p2p.core import storage
from p2p.core.config import (
    ExportTilesConfig,
    PipelineConfig,
    SceneConfig,
    StacRef,
    TrainingScene,
)
from p2p.core.errors import ConfigError, InputError
from p2p.core.fielderrors import first_error


def expand_scenes(
    patterns: Sequence[str], nodata: float | None = None, items: Sequence[StacRef] = ()
) -> list[SceneConfig]:
    """Turn batch entries into scenes: a glob pattern gives one scene per match (sorted), a
    comma-joined entry is one scene stacked from band files, anything else one file; then
    each item of the STAC `items` is one scene (its assets stacked, named by its id). Paths
    and patterns may be ``s3://`` URLs.

    Raises:
        InputError: a pattern matches nothing, a file or asset is missing, or two scenes share
            an id.
    """
    scenes: list[SceneConfig] = []
    for entry in patterns:
        if glob.has_magic(entry):
            matches = (
                storage.glob(entry)
                if storage.is_remote(entry)
                else sorted(glob.glob(str(Path(entry).expanduser())))
            )
            if not matches:
                raise InputError(entry, "the pattern matches no file")
            scenes += [SceneConfig(source=[m], nodata=nodata) for m in matches]
        else:
            scenes.append(SceneConfig.model_validate({"source": entry, "nodata": nodata}))
    if items:
        from p2p.core.stac import item_scenes  # pystac costs ~0.2 s to import: only when used

        found = item_scenes([(ref.stac, ref.assets) for ref in items])
        scenes += [SceneConfig(source=files, name=name, nodata=nodata) for name, files in found]
    seen: dict[str, str] = {}
    for scene in scenes:
        for f in scene.source:
            storage.require_file(f)
        if scene.scene_id in seen:
            raise InputError(
                scene.source[0], f"scene id {scene.scene_id!r} repeats {seen[scene.scene_id]}"
            )
        seen[scene.scene_id] = scene.source[0]
    return scenes


def parse_config(
    data: dict[str, Any],
    source: str = "config",
    base: Path | None = None,
    overrides: Sequence[str] = (),
) -> PipelineConfig:
    """Validate a mapping into a `PipelineConfig`; relative STAC item paths are read against
    `base` (the current folder when None).

    Raises:
        ConfigError: naming the first offending field, e.g. ``train.epochs: ...``, after the
            ``--set`` option that gave it, else after `source`.
    """
    try:
        return PipelineConfig.model_validate(data, context={"base": base})
    except ValidationError as exc:
        field, msg = first_error(exc, PipelineConfig)
        blamed = [o for o in overrides if _concerns(o.split("=", 1)[0].strip(), field, msg)]
        where = f"--set {blamed[0]}" if blamed else source
        raise ConfigError(f"{where}: {field}", msg) from None


def _concerns(key: str, field: str, msg: str) -> bool:
    """Whether the override of dotted `key` set `field` (or a field the message names)."""
    return (
        key == field
        or field.startswith(key + ".")
        or key.startswith(field + ".")
        or (re.search(rf"(^|[^\w.]){re.escape(key)}\b", msg) is not None)
    )


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.field=value`` overrides; values are parsed as YAML scalars or lists."""
    out: dict[str, Any] = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "an override must look like section.field=value")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = out
        for key in keys[:-1]:
            child = node.get(key)
            child = dict(child) if isinstance(child, dict) else {}
            node[key] = child
            node = child
        node[keys[-1]] = yaml.safe_load(raw)
    return out


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML config file, apply CLI overrides and validate it.

    Relative scene paths and the workspace are resolved against the config file's folder.

    Raises:
        ConfigError: the file is missing, is not YAML, or holds an invalid config.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, f"cannot read config file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            path, f"not a UTF-8 text file (byte {exc.start}); a config is YAML text"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(path, f"not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, "a config file must hold a mapping of sections")
    data = apply_overrides(data, overrides or [])
    config = parse_config(data, str(path), path.parent.resolve(), overrides or [])
    return resolve_paths(config, path.parent)


def _resolve(p: str, base: Path) -> str:
    if storage.is_remote(p):
        return p
    q = Path(p).expanduser()
    return str(q if q.is_absolute() else (base / q).resolve())


def map_scene_paths(scene: TrainingScene, fn: Callable[[str], str]) -> TrainingScene:
    """`scene` with `fn` applied to each of its paths (files or the export folder)."""
    if isinstance(scene, ExportTilesConfig):
        return scene.model_copy(update={"export_tiles": fn(scene.export_tiles)})
    return scene.model_copy(
        update={
            "source": [fn(p) for p in scene.source],
            "target": None if scene.target is None else [fn(p) for p in scene.target],
        }
    )


def resolve_paths(config: PipelineConfig, base: Path) -> PipelineConfig:
    """Return `config` with the workspace and scene paths made absolute against `base`."""
    scenes = [map_scene_paths(s, lambda p: _resolve(p, base)) for s in config.scenes]
    return config.model_copy(
        update={"workspace": _resolve(config.workspace, base), "scenes": scenes}
    )
