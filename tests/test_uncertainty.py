"""Per-pixel uncertainty (`PredictConfig.uncertainty`): the spread of the 8 test-time
symmetries, written beside the prediction on its grid, blended like it, resumable like it."""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from pydantic import ValidationError

from p2p.bands.normalization import BandStats, prepare_window
from p2p.bands.symmetry import dihedral, undo_dihedral
from p2p.core.config import PredictConfig, SceneConfig
from p2p.infer import runtime
from p2p.infer.inference import predict_scene, uncertainty_path
from p2p.model.bundle import Bundle, load_bundle
from tests.faultkit import write_scene, write_tiny_bundle

CFG = PredictConfig(
    tile_size=32, overlap=4, batch_size=3, output_format="gtiff", device="cpu", uncertainty=True
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return load_bundle(write_tiny_bundle(tmp_path_factory.mktemp("bundle") / "model"))


def _read(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    with rasterio.open(path) as ds:
        meta = {"grid": (ds.crs, ds.transform, ds.width, ds.height), "dtypes": ds.dtypes,
                "nodata": ds.nodata, "tags": ds.tags(), "names": ds.descriptions}  # fmt: skip
        return ds.read(), meta


def _scene(path: Path, height: int = 150, width: int = 70) -> Path:
    scene = write_scene(path, height=height, width=width)
    with rasterio.open(scene, "r+") as ds:  # a hole of nodata
        ds.write(np.zeros((2, 10, 15), np.uint16), window=((30, 40), (20, 35)))
    return scene


@pytest.mark.parametrize("tensors", [False, True])
def test_uncertainty_raster_beside_the_prediction(
    tmp_path: Path, bundle: Bundle, monkeypatch: pytest.MonkeyPatch, tensors: bool
) -> None:
    if tensors:  # the CUDA code, on the CPU
        monkeypatch.setattr(runtime, "TENSOR_DEVICES", ("cpu", "cuda"))
    scene = SceneConfig(source=str(_scene(tmp_path / "scene.tif")))
    plain = predict_scene(
        bundle, scene, tmp_path / "plain.tif", CFG.model_copy(update={"uncertainty": False})
    )
    result = predict_scene(bundle, scene, tmp_path / "pred.tif", CFG)
    assert plain.uncertainty is None
    assert result.uncertainty == str(tmp_path / "pred.uncertainty.tif")
    pred, pred_meta = _read(result.output)
    spread, meta = _read(result.uncertainty)
    np.testing.assert_array_equal(pred, _read(plain.output)[0])  # the prediction is unchanged
    assert meta["grid"] == pred_meta["grid"] and meta["dtypes"] == ("float32",)
    assert math.isnan(meta["nodata"]) and meta["names"] == ("t1_spread",)
    assert (
        meta["tags"]["P2P_LAYER"] == "uncertainty"
        and "symmetries" in meta["tags"]["P2P_UNCERTAINTY"]
    )
    assert meta["tags"]["P2P_SETTINGS"] == pred_meta["tags"]["P2P_SETTINGS"]
    np.testing.assert_array_equal(np.isnan(spread), pred == 0)  # NaN where the output is nodata
    valid = ~np.isnan(spread)
    assert valid.sum() > 0.9 * spread.size and (spread[valid] >= 0).all()
    assert spread[valid].mean() > 0.1  # 0.1 DN: a random U-Net is not symmetric
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "plain.tif", "pred.tif", "pred.uncertainty.tif", "scene.tif"]  # fmt: skip


class PixelFunction(torch.nn.Module):
    """Pixel-wise, so it commutes with every symmetry: zero spread."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x[:, :1] - 0.5 * x[:, 1:2])


def test_spread_is_the_symmetries_standard_deviation_in_target_units(
    tmp_path: Path, bundle: Bundle
) -> None:
    """A 28 px scene is one window with no overlap: its spread is computable by hand."""
    path = write_scene(tmp_path / "s.tif", height=28, width=28)
    scene = SceneConfig(source=str(path))
    spread, _ = _read(predict_scene(bundle, scene, tmp_path / "p.tif", CFG).uncertainty or "")
    with rasterio.open(path) as ds:
        data = ds.read()
    x = torch.from_numpy(
        prepare_window(data, np.ones((28, 28), bool), BandStats.from_dict(bundle.meta.source_stats))
    )[None]
    with torch.no_grad():
        ys = [undo_dihedral(bundle.generator(dihedral(x, k)), k).double() for k in range(8)]
    std = torch.stack(ys).std(dim=0, unbiased=False)[0].numpy()
    span = BandStats.from_dict(bundle.meta.target_stats).spans()[0]
    np.testing.assert_allclose(spread, std * span / 2, rtol=1e-4, atol=1e-3)
    assert spread.max() > 1.0

    symmetric = Bundle(bundle.meta, bundle.weights_hash, bundle.path, PixelFunction())
    flat, _ = _read(predict_scene(symmetric, scene, tmp_path / "q.tif", CFG).uncertainty or "")
    assert flat.max() < 1e-3  # 0 up to float32 rounding of the mean (1e-7 of the span)


@pytest.mark.parametrize("failing", ["pred.tif", "pred.uncertainty.tif"])
def test_a_run_stopped_mid_scene_resumes_both_rasters_exactly(
    tmp_path: Path, bundle: Bundle, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """A full disk on the 12th commit of one raster's state (the other's then disagrees, or is
    one commit behind); the rerun resumes and writes what an uninterrupted run writes."""
    scene = SceneConfig(source=str(_scene(tmp_path / "scene.tif", height=400, width=40)))
    real = os.replace
    seen = []

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if Path(dst).name == f".{failing}.state.json":
            seen.append(dst)
            if len(seen) == 12:  # past the first block row (256 rows)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src), None, str(dst))
        real(src, dst, *args, **kwargs)

    out = tmp_path / "out" / "pred.tif"
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space left"):
        predict_scene(bundle, scene, out, CFG)
    monkeypatch.undo()
    resumed = predict_scene(bundle, scene, out, CFG)
    fresh = predict_scene(bundle, scene, tmp_path / "fresh" / "pred.tif", CFG)
    assert resumed.resumed_rows == 256
    for a, b in ((resumed.output, fresh.output), (resumed.uncertainty, fresh.uncertainty)):
        np.testing.assert_array_equal(_read(a or "")[0], _read(b or "")[0])
    assert sorted(p.name for p in out.parent.iterdir()) == ["pred.tif", "pred.uncertainty.tif"]
    assert uncertainty_path(out).is_file()


def test_uncertainty_needs_test_time_augmentation() -> None:
    with pytest.raises(ValidationError, match="uncertainty needs tta"):
        PredictConfig(uncertainty=True, tta=False)
