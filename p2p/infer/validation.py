"""Score the validation blocks of the training scenes the way users get predictions.

Training validates chip by chip. Users get a scene predicted by the seamless engine instead:
windows of the bundle's chip size with overlap, blended, clipped to the target dtype. Here the
validation chips' footprints on each training scene are predicted by that same engine
(`predict_rows`, the pixels `predict_scene` writes, computed only for the row strips that hold
validation chips) and scored against the scene's target, warped onto the source grid as tiling
warped it, with the baselines on the same pixels and the one data range (the span of the
training target statistics). Memory is bounded by one row strip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from rasterio.windows import Window

from p2p.core.config import PredictConfig, SceneConfig
from p2p.infer.inference import predict_rows, resolve_window
from p2p.model.baselines import Baselines, BaselineScore, with_baselines
from p2p.model.bundle import Bundle
from p2p.model.metrics import MetricAccumulator
from p2p.model.normalization import BandStats
from p2p.raster import SceneReader, open_aligned


@dataclass(frozen=True)
class ValidationScene:
    """A training scene and where its validation chips lie.

    Attributes:
        scene: The scene pair as it was tiled.
        resampling: How tiling warped the target onto the source grid.
        boxes: `(y0, x0)` upper-left pixel of each validation chip on the source grid.
        chip_size: Chip side in pixels.
    """

    scene: SceneConfig
    resampling: str
    boxes: tuple[tuple[int, int], ...]
    chip_size: int

    def mask(self, row0: int, height: int, width: int) -> np.ndarray:
        """`(height, width)` bool: pixels of rows `[row0, row0 + height)` inside a chip."""
        inside = np.zeros((height, width), dtype=bool)
        for y0, x0 in self.boxes:
            top, bottom = max(y0, row0), min(y0 + self.chip_size, row0 + height)
            if top < bottom:
                inside[top - row0 : bottom - row0, x0 : x0 + self.chip_size] = True
        return inside


def score_validation_blocks(
    bundle: Bundle, scenes: Sequence[ValidationScene], config: PredictConfig
) -> dict[str, Any] | None:
    """Predict the validation chips' footprints through the seamless engine and score them.

    Args:
        bundle: The model bundle (with its baselines).
        scenes: The training scenes with their validation chips (`p2p.stages.evaluate`).
        config: Prediction settings (window, overlap, blend, tta, batch, device).

    Returns:
        None when no tiled scene has validation chips, else `MetricAccumulator.compute()`
        (per-band and overall MAE, RMSE, PSNR, SSIM in target units; SSIM windows inside row
        strips) with ``baselines``, ``skill``, ``pixels`` (scored pixels), ``scenes`` (ids) and
        ``window`` (``tile_size``, ``overlap``, ``blend``, ``tta``).
    """
    if not scenes:
        return None
    metrics = MetricAccumulator(BandStats.from_dict(bundle.meta.target_stats).spans())
    baselines = BaselineScore(Baselines.from_dict(bundle.meta.baselines))
    for vs in scenes:
        _score_scene(bundle, vs, config, metrics, baselines)
    result = with_baselines(metrics.compute(), baselines.compute())
    tile, overlap = resolve_window(bundle.meta, config)
    return result | {
        "pixels": result["bands"][0]["count"],
        "scenes": [vs.scene.scene_id for vs in scenes],
        "window": {"tile_size": tile, "overlap": overlap, "blend": config.blend, "tta": config.tta},
    }


def _score_scene(
    bundle: Bundle,
    vs: ValidationScene,
    config: PredictConfig,
    metrics: MetricAccumulator,
    baselines: BaselineScore,
) -> None:
    """Add one scene's validation pixels, strip by strip, to the model's and baselines' sums."""
    scene = vs.scene
    assert scene.target is not None
    with (
        SceneReader(scene.source, bands=scene.source_bands, nodata=scene.nodata) as source,
        open_aligned(
            scene.target, source.grid, scene.target_bands, scene.nodata, vs.resampling
        ) as target,
    ):

        def consume(row0: int, values: np.ndarray, valid: np.ndarray) -> None:
            window = Window(0, row0, values.shape[2], values.shape[1])
            t, t_valid = target.read(window)
            s, s_valid = source.read(window)
            mask = valid & t_valid & s_valid & vs.mask(row0, *valid.shape)
            if mask.any():
                metrics.update(
                    torch.from_numpy(values.astype(np.float64))[None],
                    torch.from_numpy(t.astype(np.float64))[None],
                    torch.from_numpy(mask)[None, None],
                )
                baselines.update(s[:, mask], t[:, mask])

        rows = [(y0, y0 + vs.chip_size) for y0 in sorted({y for y, _ in vs.boxes})]
        predict_rows(bundle, scene, config, rows, consume)
