"""STAC items as scenes: asset keys pick band files (local or in a bucket), items name scenes,
an ItemCollection is a batch; a missing asset is one line naming the item."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
import yaml
from rasterio.windows import Window

from p2p.core.config import SceneConfig, StacRef
from p2p.core.configfile import expand_scenes, load_config
from p2p.core.errors import InputError
from p2p.raster import SceneReader
from tests.rasters import ramp, write_geotiff


def make_item(item_id: str, hrefs: dict[str, str]) -> pystac.Item:
    """A minimal STAC Item whose assets point at `hrefs` (kept as given, relative or not)."""
    item = pystac.Item(
        id=item_id,
        geometry={"type": "Point", "coordinates": [15.0, 9.0]},
        bbox=[15.0, 9.0, 15.0, 9.0],
        datetime=datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC),
        properties={},
    )
    for key, href in hrefs.items():
        item.add_asset(key, pystac.Asset(href=href, media_type=pystac.MediaType.COG))
    return item


def write_json(path: Path, stac_object: pystac.Item | pystac.ItemCollection) -> Path:
    """Write a STAC object without rewriting its hrefs."""
    data = stac_object.to_dict(transform_hrefs=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def band_files(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Three single-band files B02, B03, B04 on one grid."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        key: write_geotiff(folder / f"{key}.tif", ramp(1, 48, 40) + 10 * n + seed)
        for n, key in enumerate(("B02", "B03", "B04"))
    }


def test_a_config_side_from_an_item_uses_its_assets_in_order_and_its_id(tmp_path: Path) -> None:
    band_files(tmp_path / "scene")
    item = make_item("S2_T33_1", {k: f"./{k}.tif" for k in ("B02", "B03", "B04")})
    write_json(tmp_path / "scene" / "item.json", item)
    (tmp_path / "p2p.yaml").write_text(
        yaml.safe_dump(
            {
                "scenes": [
                    {
                        "source": {"stac": "scene/item.json", "assets": ["B04", "B02"]},
                        "target": {"stac": "scene/item.json", "assets": ["B03"]},
                    }
                ]
            }
        )
    )
    scene = load_config(tmp_path / "p2p.yaml").scenes[0]
    folder = (tmp_path / "scene").resolve()
    assert scene.source == [str(folder / "B04.tif"), str(folder / "B02.tif")]
    assert scene.target == [str(folder / "B03.tif")]
    assert scene.scene_id == "S2_T33_1"
    with SceneReader(scene.source) as reader:
        assert reader.band_names == ["B04", "B02"]


def test_an_item_in_a_bucket_reads_its_assets_in_place(s3: Any, tmp_path: Path) -> None:
    files = band_files(tmp_path / "local")
    for key, path in files.items():
        s3.put(path, s3.url(f"tiles/x/{key}.tif"))
    item = make_item("x", {"B02": "B02.tif", "B03": s3.url("tiles/x/B03.tif")})
    s3.put(write_json(tmp_path / "item.json", item), s3.url("tiles/x/item.json"))
    scene = SceneConfig.model_validate(
        {"source": {"stac": s3.url("tiles/x/item.json"), "assets": ["B02", "B03"]}}
    )
    assert scene.source == [s3.url("tiles/x/B02.tif"), s3.url("tiles/x/B03.tif")]
    local = [str(files["B02"]), str(files["B03"])]
    with SceneReader(scene.source) as remote, SceneReader(local) as disk:
        window = Window(0, 0, 40, 48)
        for a, b in zip(remote.read(window), disk.read(window), strict=True):
            np.testing.assert_array_equal(a, b)


def test_an_item_collection_is_one_scene_per_item(tmp_path: Path) -> None:
    items = []
    for n in range(3):
        files = band_files(tmp_path / f"t{n}", seed=n)
        items.append(make_item(f"tile-{n}", {k: str(p) for k, p in files.items()}))
    path = write_json(tmp_path / "batch.json", pystac.ItemCollection(items))
    scenes = expand_scenes([], nodata=0, items=[StacRef(stac=str(path), assets=["B02", "B03"])])
    assert [s.scene_id for s in scenes] == ["tile-0", "tile-1", "tile-2"]
    assert scenes[2].source == [str(tmp_path / "t2" / "B02.tif"), str(tmp_path / "t2" / "B03.tif")]
    assert all(s.nodata == 0 for s in scenes)


def test_a_missing_asset_or_item_is_one_line(tmp_path: Path) -> None:
    band_files(tmp_path)
    path = write_json(tmp_path / "item.json", make_item("i1", {"B02": "B02.tif"}))
    with pytest.raises(InputError, match=r"item 'i1' has no asset 'B08' \(it has B02\)") as err:
        SceneConfig.model_validate({"source": {"stac": str(path), "assets": ["B02", "B08"]}})
    assert err.value.where == str(path)
    with pytest.raises(InputError, match="cannot read the STAC document"):
        SceneConfig.model_validate(
            {"source": {"stac": str(tmp_path / "no.json"), "assets": ["B02"]}}
        )
    collection = write_json(
        tmp_path / "two.json", pystac.ItemCollection([make_item("a", {}), make_item("b", {})])
    )
    with pytest.raises(InputError, match="holds 2 items; a scene side takes one item"):
        SceneConfig.model_validate({"source": {"stac": str(collection), "assets": ["B02"]}})
