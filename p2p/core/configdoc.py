"""A config as a commented YAML file: every field, its value and, above it, what it means and
its default (`p2p config init`). Loading the text back gives the same config.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

from pydantic import BaseModel

from p2p.core.config import PipelineConfig, SceneConfig

_WIDTH = 92

_SCENES_HELP = """\
Training scenes, one entry each. A side is one raster, a list of band files (or
band files joined by commas), or a STAC item; an ArcGIS Export Tiles folder is a
scene of its own. For example:
  - {source: [scene_B2.tif, scene_B3.tif, scene_B4.tif], target: scene_map.tif}
  - {source: scene.tif, target: scene.tif, source_bands: [1, 2, 3], target_bands: [4]}
  - {export_tiles: exported_chips/}
Fields of a scene:"""


def commented_yaml(config: PipelineConfig, title: str = "") -> str:
    """`config` as YAML with a comment above every field (description and default).

    Args:
        config: The config to write (`PipelineConfig()` for the defaults).
        title: Comment lines put first (e.g. how the file was made).
    """
    lines = [f"# {line}" if line else "#" for line in title.splitlines()]
    lines += _model_lines(config, 0)
    return "\n".join(lines) + "\n"


def _comment(text: str, pad: str) -> list[str]:
    return [
        f"{pad}# {line}"
        for para in text.splitlines()
        for line in (textwrap.wrap(para, _WIDTH - len(pad) - 2) if para.strip() else [""])
    ]


def _scalar(value: Any) -> str:
    """A value in YAML flow style (JSON is YAML; strings stay bare where YAML reads them back
    as the same string)."""
    if isinstance(value, dict | list) and value:
        import yaml

        flow = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6)
        return flow.strip()
    text = json.dumps(value)
    if isinstance(value, str) and value and value[0] not in "-?:,[]{}#&*!|>'\"%@`~ ":
        import yaml

        if yaml.safe_load(value) == value and ": " not in value and " #" not in value:
            return value
    return text


def _model_lines(model: BaseModel, indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        default = field.get_default(call_default_factory=True)
        if isinstance(value, BaseModel):
            lines += ["", *_comment(field.description or "", pad), f"{pad}{name}:"]
            lines += _model_lines(value, indent + 2)
            continue
        if name == "scenes":
            lines += _scene_lines(value, pad)
            continue
        plain = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        note = field.description or ""
        if not isinstance(default, BaseModel) and plain != default:
            note += f" Default: {_scalar(default)}."
        lines += [*_comment(note, pad), f"{pad}{name}: {_scalar(_jsonable(plain))}"]
    return lines


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        data = value.model_dump(mode="json", exclude_defaults=True)
        # one file per side reads best as a plain path
        return {
            k: v[0] if isinstance(v, list) and len(v) == 1 and k in ("source", "target") else v
            for k, v in data.items()
        }
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _scene_lines(scenes: list[Any], pad: str) -> list[str]:
    fields = [f"  {name}: {field.description}" for name, field in SceneConfig.model_fields.items()]
    lines = ["", *(f"{pad}# {line}" for line in _SCENES_HELP.splitlines())]
    lines += [f"{pad}# {line}" for line in fields]
    if not scenes:
        return [*lines, f"{pad}scenes: []"]
    lines.append(f"{pad}scenes:")
    lines += [f"{pad}  - {_scalar(_jsonable(scene))}" for scene in scenes]
    return lines
