"""STAC items as scenes: an Item's assets, picked by key, are a scene side's band files.

A scene side written as ``{stac: item.json, assets: [B02, B03]}`` becomes the asset files in
that order (relative hrefs resolved against the item's own location), and the scene is named
by the item's id. An ItemCollection gives one scene per item, for batch prediction. The JSON
may be a local file, an ``s3://`` object or an ``http(s)://`` URL; asset hrefs may be local
paths or ``s3://`` URLs, which are then read in place like any other scene file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pystac
from pystac.utils import make_absolute_href

from p2p.core import storage
from p2p.core.errors import InputError


def _location(href: str, base: Path | None) -> str:
    """An absolute location of the JSON: URLs as given, relative paths against `base`."""
    if "://" in href:
        return href
    path = Path(href).expanduser()
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    return str(path.resolve())


def _read_json(href: str) -> Any:
    if storage.is_remote(href):
        text = storage.read_bytes(href).decode("utf-8", errors="replace")
    elif "://" in href:
        try:
            text = pystac.StacIO.default().read_text(href)
        except Exception as exc:
            raise InputError(href, f"cannot read the STAC document ({exc})") from None
    else:
        try:
            text = Path(href).read_text()
        except OSError as exc:
            raise InputError(href, f"cannot read the STAC document ({exc.strerror})") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InputError(href, f"is not JSON ({exc})") from None


def read_items(href: str, base: Path | None = None) -> tuple[str, list[pystac.Item]]:
    """Read a STAC Item or ItemCollection.

    Args:
        href: The JSON's path or URL.
        base: Folder that a relative path is relative to (the config file's); the current
            folder when None.

    Returns:
        (the JSON's absolute location, its items in file order).

    Raises:
        InputError: the JSON cannot be read or is neither an Item nor an ItemCollection.
    """
    where = _location(href, base)
    data = _read_json(where)
    kind = data.get("type") if isinstance(data, dict) else None
    try:
        if kind == "Feature":
            return where, [pystac.Item.from_dict(data, preserve_dict=False)]
        if kind == "FeatureCollection":
            return where, list(pystac.ItemCollection.from_dict(data, preserve_dict=False))
    except Exception as exc:
        raise InputError(where, f"is not a valid STAC document ({exc})") from None
    raise InputError(where, "is neither a STAC Item nor an ItemCollection (no type Feature)")


def asset_files(item: pystac.Item, assets: list[str], where: str) -> list[str]:
    """The files of `assets` of `item`, in order, as absolute paths or URLs.

    Raises:
        InputError: an asset key is not in the item.
    """
    missing = [key for key in assets if key not in item.assets]
    if missing:
        have = ", ".join(sorted(item.assets)) or "none"
        raise InputError(where, f"item {item.id!r} has no asset {missing[0]!r} (it has {have})")
    return [make_absolute_href(item.assets[key].href, where) for key in assets]


def item_scenes(refs: Sequence[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    """Every item of the Items/ItemCollections `refs` (JSON href, asset keys) as (item id,
    asset files in order), in file order.

    Raises:
        InputError: unreadable JSON or a missing asset key.
    """
    scenes: list[tuple[str, list[str]]] = []
    for href, assets in refs:
        where, items = read_items(href)
        scenes += [(item.id, asset_files(item, assets, where)) for item in items]
    return scenes


def scene_side(href: str, assets: list[str], base: Path | None = None) -> tuple[list[str], str]:
    """One scene side from a STAC Item: (its asset files in order, the item id).

    Raises:
        InputError: unreadable JSON, not exactly one item, or a missing asset key.
    """
    where, items = read_items(href, base)
    if len(items) != 1:
        raise InputError(where, f"holds {len(items)} items; a scene side takes one item")
    return asset_files(items[0], assets, where), items[0].id
