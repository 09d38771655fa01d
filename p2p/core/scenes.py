"""Typed scene configuration: which files make up one scene, and the frozen base of every
config model (`p2p.core.config` gathers them per stage).

A scene side is a path, band files joined by commas, a list of paths, or a STAC item with asset
keys; an ArcGIS Export Tiles folder is a training scene of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

#: Upper bound of a side in pixels (a chip, a window, a step): far above any real run, low
#: enough that a typo (1e9) is refused before it allocates anything.
MAX_SIDE = 16384


class FrozenConfig(BaseModel):
    """Every config model: immutable, unknown keys refused, and no float that is not finite
    (``.inf``/``.nan`` name no setting: refused in one line naming the field)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def _as_list(value: Any) -> Any:
    """Accept one path, a comma-joined list of band files, or a list of paths."""
    if isinstance(value, str | Path):
        return [part.strip() for part in str(value).split(",") if part.strip()]
    return value


#: Files of one scene side: a path, band files joined by commas, or a list of paths; always a
#: list once validated. The JSON schema (the Prefect deployment's parameter schema, checked by
#: the server and rendered by the UI form) accepts what YAML accepts: a string or a list.
Paths = Annotated[
    list[str],
    BeforeValidator(_as_list),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}),
]


class StacRef(FrozenConfig):
    """A STAC Item (or ItemCollection) and the assets to stack, in order, as bands."""

    stac: str = Field(
        description="Item or ItemCollection JSON: a path (relative to the config file) or a "
        "URL (s3://, https://)."
    )
    assets: list[str] = Field(
        min_length=1, description="Asset keys stacked in order as bands, e.g. [B02, B03, B04]."
    )


def _base(info: ValidationInfo) -> Path | None:
    """The folder relative paths are relative to (the config file's), when validating one."""
    base = (info.context or {}).get("base") if isinstance(info.context, dict) else None
    return Path(base) if base is not None else None


class SceneConfig(FrozenConfig):
    """One scene: a source raster (and, for training, its paired target).

    Either side may be given as a STAC item, ``{stac: item.json, assets: [B02, B03]}``: it
    becomes the item's asset files in that order, and the scene takes the item's id as name.
    """

    source: Paths = Field(
        description="Source raster path, or band files stacked in order (list or comma-joined)."
    )
    target: Paths | None = Field(
        default=None,
        description="Target raster path or band files; required for training scenes.",
    )
    source_bands: list[int] | None = Field(
        default=None, description="1-based band selection from the stacked source, e.g. [1, 2, 3]."
    )
    target_bands: list[int] | None = Field(
        default=None, description="1-based band selection from the stacked target, e.g. [4]."
    )
    nodata: float | None = Field(
        default=None,
        description="Nodata value overriding the files' own (many real files leave it unset).",
    )
    name: str | None = Field(
        default=None, description="Scene id; defaults to the first source file's stem."
    )

    @model_validator(mode="before")
    @classmethod
    def _stac_sides(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for side in ("source", "target"):
            value = out.get(side)
            if isinstance(value, dict | StacRef):
                from p2p.core import stac  # pystac costs ~0.2 s to import: only when used

                ref = StacRef.model_validate(value)
                out[side], item_id = stac.scene_side(ref.stac, ref.assets, _base(info))
                if side == "source" and out.get("name") is None:
                    out["name"] = item_id
        return out

    @field_validator("source")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("a scene needs at least one source file")
        return value

    @field_validator("source_bands", "target_bands")
    @classmethod
    def _one_based(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or min(value) < 1):
            raise ValueError("band numbers are 1-based and the list may not be empty")
        return value

    @property
    def scene_id(self) -> str:
        """Stable scene id: `name`, or the stem of the first source file."""
        return self.name or Path(self.source[0]).stem


class ExportTilesConfig(FrozenConfig):
    """One ArcGIS Export Tiles folder of training chips (``images/`` + ``images2/``)."""

    export_tiles: str = Field(
        description="Folder written by ArcGIS 'Export Training Data For Deep Learning' "
        "(Export Tiles format): source chips in images/, paired target chips in images2/."
    )
    name: str | None = Field(default=None, description="Scene id; defaults to the folder name.")

    @property
    def scene_id(self) -> str:
        """Stable scene id: `name`, or the folder's name."""
        return self.name or Path(self.export_tiles).name


#: A training scene: a GeoTIFF pair to tile, or an Export Tiles folder to import.
TrainingScene = SceneConfig | ExportTilesConfig
