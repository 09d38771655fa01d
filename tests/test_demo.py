"""The demo's synthetic scenes: real UTM GeoTIFFs, paired, overlapping held-out scenes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio

from p2p.demo import write_demo_scenes
from p2p.demo.world import CASING, MAP_COLOURS


def _read(path: str) -> tuple[np.ndarray, rasterio.Affine, str]:
    with rasterio.open(path) as src:
        return src.read(), src.transform, src.crs.to_string()


def test_scenes_are_paired_utm_geotiffs(tmp_path: Path) -> None:
    data = write_demo_scenes(tmp_path, scene_size=96)
    assert len(data.train) == 3 and len(data.held_out) == 2
    for scene in [*data.train, *data.held_out]:
        image, t_image, crs = _read(scene.source[0])
        target, t_target, crs_t = _read(scene.target[0])  # type: ignore[index]
        assert crs == crs_t == "EPSG:32633"
        assert t_image == t_target and t_image.a == 2.0
        assert image.shape == target.shape == (3, 96, 96)
        assert image.dtype == np.uint8
        # the map uses only its palette; the image is textured, not flat
        palette = {tuple(int(v) for v in c) for c in [*MAP_COLOURS, CASING]}
        assert {tuple(p) for p in target.reshape(3, -1).T} <= palette
        assert len(np.unique(image.reshape(3, -1), axis=1).T) > 1000


def test_held_out_scenes_overlap_and_agree(tmp_path: Path) -> None:
    data = write_demo_scenes(tmp_path, scene_size=96)
    a, ta, _ = _read(data.held_out[0].source[0])
    b, tb, _ = _read(data.held_out[1].source[0])
    union, tu, _ = _read(data.union_source)
    shift = round((tb.c - ta.c) / ta.a)
    assert 0 < shift < 96  # they overlap by 96 - shift columns
    np.testing.assert_array_equal(a[:, :, shift:], b[:, :, : 96 - shift])
    assert tu == ta and union.shape == (3, 96, 96 + shift)
    np.testing.assert_array_equal(union[:, :, shift:], b)
    # held-out scenes lie below the training scenes, never on them
    _, t_train, _ = _read(data.train[0].source[0])
    assert ta.f <= t_train.f - 96 * 2.0


def test_second_call_keeps_the_files(tmp_path: Path) -> None:
    data = write_demo_scenes(tmp_path, scene_size=64)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*.tif")}
    again = write_demo_scenes(tmp_path, scene_size=64)
    assert again == data
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*.tif")} == before
    assert len(before) == 12
