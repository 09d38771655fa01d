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

from p2p.bands.baselines import Baselines, BaselineScore, with_baselines
from p2p.bands.normalization import BandStats
from p2p.core.config import PredictConfig, SceneConfig
from p2p.infer.inference import predict_rows, resolve_window
from p2p.infer.seams import SeamAccumulator, layout_of
from p2p.infer.spectral import SpectralAccumulator, parse_index
from p2p.infer.windows import axis_layout
from p2p.model.bundle import Bundle
from p2p.model.metrics import MetricAccumulator
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
    bundle: Bundle,
    scenes: Sequence[ValidationScene],
    config: PredictConfig,
    indices: Sequence[str] = (),
) -> dict[str, Any] | None:
    """Predict the validation chips' footprints through the seamless engine and score them.

    Args:
        bundle: The model bundle (with its baselines).
        scenes: The training scenes with their validation chips (`p2p.stages.evaluate`).
        config: Prediction settings (window, overlap, blend, tta, batch, device).
        indices: Normalized differences ``NAME=A,B`` of target bands to score
            (`p2p.infer.spectral.parse_index`), beside the linear baseline's.

    Returns:
        None when no tiled scene has validation chips, else `MetricAccumulator.compute()`
        (per-band and overall MAE, RMSE, PSNR, SSIM in target units; SSIM windows inside row
        strips) with ``baselines``, ``skill``, ``pixels`` (scored pixels), ``scenes`` (ids),
        ``window`` (``tile_size``, ``overlap``, ``blend``, ``tta``), ``spectral`` (SAM over
        the validation pixels, `p2p.infer.spectral`) and ``seams`` (the seam score of the
        predicted rows against the target, over pixel pairs inside validation chips,
        `p2p.infer.seams`).
    """
    if not scenes:
        return None
    names = [str(n) for n in bundle.meta.target_bands]
    specs = [parse_index(text, names) for text in indices]
    sums = _Sums(
        MetricAccumulator(BandStats.from_dict(bundle.meta.target_stats).spans()),
        BaselineScore(Baselines.from_dict(bundle.meta.baselines)),
        SpectralAccumulator(int(bundle.meta.out_channels), specs),
        [],
    )
    for vs in scenes:
        _score_scene(bundle, vs, config, sums)
    result = with_baselines(sums.metrics.compute(), sums.baselines.compute())
    tile, overlap = resolve_window(bundle.meta, config)
    seams = sums.seams[0]
    for other in sums.seams[1:]:
        seams.merge(other)
    return result | {
        "spectral": {"sam": sums.spectral.sam(), "indices": sums.spectral.index_scores()},
        "seams": seams.compute(names),
        "pixels": result["bands"][0]["count"],
        "scenes": [vs.scene.scene_id for vs in scenes],
        "window": {"tile_size": tile, "overlap": overlap, "blend": config.blend, "tta": config.tta},
    }


@dataclass
class _Sums:
    """What the validation pixels add to, all scenes together (seams: one per scene)."""

    metrics: MetricAccumulator
    baselines: BaselineScore
    spectral: SpectralAccumulator
    seams: list[SeamAccumulator]


def _scene_seams(bundle: Bundle, config: PredictConfig, height: int, width: int) -> SeamAccumulator:
    """A seam accumulator with the windows `predict_rows` lays on a scene."""
    tile, overlap = resolve_window(bundle.meta, config)
    multiple = int(2**bundle.meta.model.num_downs)
    ly, lx = (axis_layout(n, tile, overlap, multiple, config.blend) for n in (height, width))
    return SeamAccumulator(layout_of(ly, lx), int(bundle.meta.out_channels))


def _score_scene(bundle: Bundle, vs: ValidationScene, config: PredictConfig, sums: _Sums) -> None:
    """Add one scene's validation pixels, strip by strip, to the model's and baselines' sums,
    and its pixel pairs inside validation chips to the seam sums."""
    scene = vs.scene
    assert scene.target is not None
    with (
        SceneReader(scene.source, bands=scene.source_bands, nodata=scene.nodata) as source,
        open_aligned(
            scene.target, source.grid, scene.target_bands, scene.nodata, vs.resampling
        ) as target,
    ):
        seams = _scene_seams(bundle, config, source.grid.height, source.grid.width)
        sums.seams.append(seams)
        last: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []  # the previous strip's
        # last row: the upper partner of the vertical pairs across the strips' boundary

        def consume(row0: int, values: np.ndarray, valid: np.ndarray) -> None:
            window = Window(0, row0, values.shape[2], values.shape[1])
            t, t_valid = target.read(window)
            s, s_valid = source.read(window)
            mask = valid & t_valid & s_valid & vs.mask(row0, *valid.shape)
            if mask.any():
                sums.metrics.update(
                    torch.from_numpy(values.astype(np.float64))[None],
                    torch.from_numpy(t.astype(np.float64))[None],
                    torch.from_numpy(mask)[None, None],
                )
                sums.baselines.update(s[:, mask], t[:, mask])
                linear = sums.baselines.fit.predict_pixels("linear", s[:, mask])
                sums.spectral.update(values[:, mask], t[:, mask], linear)
            p, m, tt = values, mask, t
            halo = bool(last) and last[0][0] == row0 - 1
            if halo:
                p = np.concatenate([last[0][1], values], axis=1)
                m = np.concatenate([last[0][2], mask], axis=0)
                tt = np.concatenate([last[0][3], t], axis=1)
            seams.update(row0 - halo, 0, p, m, tt, halo_top=halo)
            last[:] = [(row0 + values.shape[1] - 1, values[:, -1:], mask[-1:], t[:, -1:])]

        rows = [(y0, y0 + vs.chip_size) for y0 in sorted({y for y, _ in vs.boxes})]
        predict_rows(bundle, scene, config, rows, consume)
