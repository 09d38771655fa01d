"""Seam score: visible window boundaries score far above 1, seamless predictions near 1."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from p2p.core.config import PredictConfig, SceneConfig
from p2p.infer.evaluation import evaluate
from p2p.infer.inference import predict_scene
from p2p.infer.seams import LAYOUT_TAG, seam_score
from p2p.raster import SceneReader
from tests.rasters import write_geotiff
from tests.test_inference import EdgeSensitive, _bundle, _one_pass, _source

#: A layout like p2p's: windows of 48 px, overlap 8, centre regions of 32 px.
LAYOUT = {"tile": [48, 48], "overlap": [8, 8], "stride": [32, 32], "origin": [0, 0],
          "count": [5, 6], "blend": "none"}  # fmt: skip


def _texture(rng: np.random.Generator, h: int = 150, w: int = 180) -> np.ndarray:
    """`(2, h, w)` float32 random texture, blurred a little (real imagery is not white noise)."""
    noise = rng.normal(0, 10, (2, h, w))
    for axis in (1, 2):
        noise = (noise + np.roll(noise, 1, axis=axis) + np.roll(noise, -1, axis=axis)) / 3
    return (200 + noise).astype(np.float32)


def _tagged(path: Path, data: np.ndarray, layout: dict | None = LAYOUT) -> Path:
    write_geotiff(path, data, nodata=-1)
    if layout is not None:
        with rasterio.open(path, "r+") as ds:
            ds.update_tags(**{LAYOUT_TAG: json.dumps(layout)})
    return path


def _score(pred: Path, target: Path | None = None, side: int = 1024) -> dict:
    with SceneReader(pred) as p:
        if target is None:
            result = seam_score(p, side=side)
        else:
            with SceneReader(target) as t:
                result = seam_score(p, t, side=side)
    assert result is not None
    return result


def test_offset_on_every_other_window_scores_far_above_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    target = _texture(rng)
    seamless = target + rng.normal(0, 1, target.shape).astype(np.float32)
    shifted = seamless.copy()
    for r in range(5):
        for c in range(6):
            if (r + c) % 2:  # a checkerboard of window centre regions gets a constant offset
                shifted[:, r * 32 : (r + 1) * 32, c * 32 : (c + 1) * 32] += 15
    t = write_geotiff(tmp_path / "t.tif", target, nodata=-1)
    good = _score(_tagged(tmp_path / "good.tif", seamless), t)
    bad = _score(_tagged(tmp_path / "bad.tif", shifted), t)
    assert 0.9 < good["seam"] < 1.1, good
    assert bad["seam"] > 3, bad
    assert all(b["seam"] > 3 for b in bad["bands"])
    # pairs: 4 row boundaries x 180 columns + 5 column boundaries x 150 rows
    assert bad["pairs"]["boundary"] == 4 * 180 + 5 * 150
    # without the target, the prediction's own ratio
    alone = _score(tmp_path / "bad.tif")
    assert alone["seam"] == pytest.approx(bad["bands"][0]["prediction_ratio"] / 2
                                          + bad["bands"][1]["prediction_ratio"] / 2)  # fmt: skip


def test_natural_edges_on_boundaries_do_not_count(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    target = _texture(rng)
    target[:, :, 64:] += 50  # a real edge that happens to lie on a window boundary
    t = write_geotiff(tmp_path / "t.tif", target, nodata=-1)
    pred = _tagged(tmp_path / "p.tif", target + rng.normal(0, 1, target.shape).astype(np.float32))
    assert _score(pred)["seam"] > 2  # the prediction's own boundaries look sharp ...
    assert _score(pred, t)["seam"] == pytest.approx(1.0, abs=0.1)  # ... as the target's are


def test_blocks_count_every_pair_once(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    data = _texture(rng)
    data[:, 40:44, 50:57] = -1  # nodata: pairs touching it drop out
    pred = _tagged(tmp_path / "p.tif", data)
    t = write_geotiff(tmp_path / "t.tif", _texture(rng), nodata=-1)
    whole, blocks = _score(pred, t), _score(pred, t, side=7)
    assert blocks["pairs"] == whole["pairs"]
    for a, b in zip(whole["bands"], blocks["bands"], strict=True):
        assert b["boundary"] == pytest.approx(a["boundary"], rel=1e-12)
        assert b["interior"] == pytest.approx(a["interior"], rel=1e-12)
        assert b["seam"] == pytest.approx(a["seam"], rel=1e-12)


def test_hand_counted_pairs_on_a_small_raster(tmp_path: Path) -> None:
    # one row of 8 columns, windows of stride 4 overlap 1: one boundary pair (3, 4), interior
    # pairs at offsets 2 only ((1, 2) and (5, 6)): m in [overlap + 1, stride - overlap - 1]
    row = np.array([[[0, 1, 3, 6, 16, 17, 19, 22]]], dtype=np.float32)
    layout = {"tile": [1, 6], "overlap": [0, 1], "stride": [1, 4], "origin": [0, 0],
              "count": [1, 2], "blend": "none"}  # fmt: skip
    result = _score(_tagged(tmp_path / "p.tif", row, layout))
    band = result["bands"][0]
    assert result["pairs"] == {"boundary": 1, "interior": 2}
    assert band["boundary"] == 10 and band["interior"] == 2
    assert result["seam"] == 5


def test_a_raster_without_layout_has_no_seam_score(tmp_path: Path) -> None:
    data = _texture(np.random.default_rng(3))
    pred = _tagged(tmp_path / "p.tif", data, layout=None)
    with SceneReader(pred) as p:
        assert seam_score(p) is None
    assert evaluate(pred, pred)["seams"] is None


def test_predictions_carry_their_layout_and_blending_hides_the_seams(tmp_path: Path) -> None:
    src, data = _source(tmp_path / "src.tif", 120, 140, hole=False)
    whole = _one_pass(EdgeSensitive(), data, "float32")
    reference = write_geotiff(tmp_path / "whole.tif", whole.astype(np.float32))
    scores = {}
    for blend, overlap, stride, count in (("none", 0, 32, [4, 5]), ("cosine", 8, 16, [8, 9])):
        cfg = PredictConfig(tile_size=32, overlap=overlap, batch_size=5, output_format="gtiff",
                            device="cpu", blend=blend)  # fmt: skip
        out = tmp_path / f"{blend}.tif"
        predict_scene(_bundle(EdgeSensitive()), SceneConfig(source=str(src)), out, cfg)
        with rasterio.open(out) as ds:
            tag = json.loads(ds.tags()[LAYOUT_TAG])
        assert tag == {"tile": [32, 32], "overlap": [overlap] * 2, "stride": [stride] * 2,
                       "origin": [0, 0], "count": count, "blend": blend}  # fmt: skip
        scores[blend] = evaluate(out, reference)["seams"]["seam"]
    # the zero-padded blur is flatter at a window's border: windows that meet without context
    # or blending differ across the boundary; blended with context, they match the reference
    assert scores["none"] > 1.1, scores  # 1.17
    assert abs(scores["cosine"] - 1) < 0.02, scores  # 0.995
