"""Importing ArcGIS Export Tiles folders (images/ + images2/) into the chip store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from PIL import Image

from p2p.core.cache import StageRecord
from p2p.core.config import DatasetConfig, ExportTilesConfig, TilingConfig
from p2p.core.errors import InputError
from p2p.data import chipstore
from p2p.data.dataset import ChipDataset
from p2p.stages import import_tiles
from p2p.stages.dataset import run as dataset_stage
from tests.rasters import write_geotiff

TILING = TilingConfig(chip_size=32, stride=32, block_chips=2, min_valid_fraction=0.5)


def export_geotiffs(
    folder: Path, rows: int = 2, cols: int = 3
) -> dict[str, tuple[np.ndarray, np.ndarray, tuple[int, int]]]:
    """Georeferenced 32 px chips on a rows x cols grid, named like ArcGIS (000000000.tif ...)."""
    (folder / "images").mkdir(parents=True)
    (folder / "images2").mkdir()
    rng = np.random.default_rng(0)
    chips = {}
    for n in range(rows * cols):
        r, c = divmod(n, cols)
        transform = Affine(0.5, 0, 300000 + 16 * c, 0, -0.5, 6000000 - 16 * r)
        src = rng.integers(0, 255, (3, 32, 32), dtype=np.uint8)
        tgt = rng.integers(1, 9, (1, 32, 32), dtype=np.uint8)
        name = f"{n:09d}.tif"
        write_geotiff(folder / "images" / name, src, transform=transform, blocksize=None)
        write_geotiff(folder / "images2" / name, tgt, transform=transform, blocksize=None)
        chips[name] = (src, tgt, (32 * c, 32 * r))
    return chips


def import_export_tiles(folder: Path, workspace: Path, tiling: TilingConfig) -> StageRecord:
    """The import stage on an Export Tiles folder."""
    return import_tiles.run(workspace, ExportTilesConfig(export_tiles=str(folder)), tiling)


def test_georeferenced_export_imports_with_positions(tmp_path: Path) -> None:
    chips = export_geotiffs(tmp_path / "export")
    rec = import_export_tiles(tmp_path / "export", tmp_path / "ws", TILING)
    index, arrays = chipstore.read_index(rec.path), chipstore.open_arrays(rec.path)
    assert len(index) == rec.summary["n_chips"] == 6 and rec.summary["source_bands"] == [
        "band_1",
        "band_2",
        "band_3",
    ]
    for row, (src, tgt, (x0, y0)) in zip(index.itertuples(), chips.values(), strict=True):
        np.testing.assert_array_equal(arrays["source"][row.chip], src)
        np.testing.assert_array_equal(arrays["target"][row.chip], tgt)
        assert (row.x0, row.y0, row.valid_fraction) == (x0, y0, 1.0)
    assert import_export_tiles(tmp_path / "export", tmp_path / "ws", TILING).cached
    ds = dataset_stage(
        tmp_path / "ws", [rec.path], DatasetConfig(val_fraction=0.3, split_block_chips=1), TILING
    )
    assert ds.summary["n_train"] + ds.summary["n_val"] == 6 and ds.summary["n_val"] >= 1
    x, y, m = ChipDataset(ds.path, "train")[0]
    assert x.shape == (3, 32, 32) and y.shape == (1, 32, 32) and float(m.min()) == 1


def test_png_exports_without_georeference_import_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "e" / "images").mkdir(parents=True)
    (tmp_path / "e" / "images2").mkdir()
    rng = np.random.default_rng(1)
    pngs = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    for n, img in enumerate(pngs):
        Image.fromarray(img).save(tmp_path / "e" / "images" / f"{n:09d}.png")
        Image.fromarray(img[:, :, 0]).save(tmp_path / "e" / "images2" / f"{n:09d}.png")
    rec = import_export_tiles(tmp_path / "e", tmp_path / "ws", TILING)
    index, arrays = chipstore.read_index(rec.path), chipstore.open_arrays(rec.path)
    assert list(index.x0) == [0, 32, 64]
    for row, img in zip(index.itertuples(), pngs, strict=True):
        np.testing.assert_array_equal(arrays["source"][row.chip], np.moveaxis(img, -1, 0))
        np.testing.assert_array_equal(arrays["target"][row.chip, 0], img[:, :, 0])


def test_bad_exports_fail_with_one_line(tmp_path: Path) -> None:
    export_geotiffs(tmp_path / "x", 1, 2)
    with pytest.raises(InputError, match=r"set tiling\.chip_size") as info:
        import_export_tiles(
            tmp_path / "x", tmp_path / "ws", TILING.model_copy(update={"chip_size": 64})
        )
    assert "\n" not in str(info.value)
    (tmp_path / "x" / "images2" / "000000001.tif").unlink()
    with pytest.raises(InputError, match=r"000000001\.tif: has no partner"):
        import_export_tiles(tmp_path / "x", tmp_path / "ws", TILING)
    with pytest.raises(InputError, match=r"images: missing"):
        import_export_tiles(tmp_path / "x" / "images", tmp_path / "ws", TILING)
    assert not list((tmp_path / "ws").glob("**/manifest.json"))
