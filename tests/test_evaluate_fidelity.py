"""The evaluate stage's spectral fidelity on a two-band target: SAM and `evaluate.indices`
on the validation blocks, against numpy on the prediction `predict_scene` writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from distributed import Client

from p2p.core.config import DaskConfig, EvaluateConfig, PredictConfig, SceneConfig
from p2p.core.errors import ConfigError
from p2p.data.dataset import load_baselines
from p2p.infer.inference import predict_scene
from p2p.infer.report import evaluate_report
from p2p.model.bundle import load_bundle
from p2p.stages.dataset import run as dataset_stage
from p2p.stages.evaluate import key_parts
from p2p.stages.evaluate import run as evaluate_stage
from p2p.stages.tile import run as tile_stage
from p2p.stages.train import run as train_stage
from tests.rasters import write_geotiff
from tests.test_quality import QUICK, SPLIT, TILING, TINY, _val_footprint, smooth_field


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, client: Client) -> Any:
    """A 128x128 pair with a two-band target (named nir, red), tiled, split, trained 1 epoch."""
    root = tmp_path_factory.mktemp("fidelity")
    rng = np.random.default_rng(5)
    src = smooth_field(rng, 2, 128)
    tgt = np.stack([0.8 * src[0] + 40, 0.3 * src[1] + 0.2 * src[0] + 10]).astype(np.float32)
    write_geotiff(root / "src.tif", src)
    write_geotiff(root / "tgt.tif", tgt, descriptions=["nir", "red"])
    scene = SceneConfig(source=[str(root / "src.tif")], target=[str(root / "tgt.tif")])
    tiles = tile_stage(root, scene, TILING, DaskConfig(), client=client)
    ds = dataset_stage(root, [tiles.path], SPLIT, TILING)
    torch.set_num_threads(1)
    return scene, ds, train_stage(root, ds, TINY, QUICK.model_copy(update={"epochs": 1}))


def _nd(x: np.ndarray) -> np.ndarray:
    return (x[0] - x[1]) / (x[0] + x[1])


def test_stage_scores_sam_and_indices_on_the_validation_blocks(
    trained: Any, tmp_path: Path
) -> None:
    scene, ds, tr = trained
    config = PredictConfig(output_format="gtiff")
    scored = evaluate_stage(tmp_path, tr, ds, config, EvaluateConfig(indices=["ndvi=nir,red"]))
    seamless = scored.summary["metrics"]["seamless"]
    out = tmp_path / "pred.tif"
    predict_scene(load_bundle(tr.summary["model"]), scene, out, config)
    with rasterio.open(out) as p, rasterio.open(scene.target[0]) as t:  # type: ignore[index]
        pred, target = p.read().astype(np.float64), t.read().astype(np.float64)
    with rasterio.open(scene.source[0]) as s:
        linear = load_baselines(ds.path).predict("linear", s.read().astype(np.float64))
    mask = _val_footprint(ds.path, target.shape[1:])
    pv, tv, lv = pred[:, mask], target[:, mask], linear[:, mask]
    cos = (pv * tv).sum(0) / np.sqrt((pv**2).sum(0) * (tv**2).sum(0))
    sam = seamless["spectral"]["sam"]
    assert sam["pixels"] == mask.sum()
    assert sam["mean"] == pytest.approx(np.degrees(np.arccos(np.clip(cos, -1, 1))).mean())
    (ndvi,) = seamless["spectral"]["indices"]
    assert ndvi["name"] == "ndvi" and ndvi["bands"] == [1, 2] and ndvi["pixels"] == mask.sum()
    assert ndvi["mae"] == pytest.approx(np.abs(_nd(pv) - _nd(tv)).mean(), rel=1e-6)
    assert ndvi["linear_mae"] == pytest.approx(np.abs(_nd(lv) - _nd(tv)).mean(), rel=1e-6)
    assert seamless["seams"]["seam"] is not None
    report = evaluate_report(scored.summary, tr.summary["model"])
    assert "| ndvi | 1, 2 |" in report and "Spectral angle (SAM)" in report
    # the indices are part of the stage's key; a band the target lacks fails cleanly
    plain = key_parts(tr, ds, config)
    assert key_parts(tr, ds, config, EvaluateConfig(indices=["ndvi=nir,red"])) != plain
    with pytest.raises(ConfigError, match="swir"):
        evaluate_stage(tmp_path / "bad", tr, ds, config, EvaluateConfig(indices=["x=nir,swir"]))


def test_index_settings_are_checked_when_the_config_loads() -> None:
    with pytest.raises(ValueError, match="NAME=A,B"):
        EvaluateConfig(indices=["ndvi=nir"])
