"""Score predictions in target units: a raster against a reference raster, or a bundle on chips.

The reference is warped onto the prediction's grid window by window (`open_aligned`), and only
pixels valid in both count. A first pass finds each band's value span in the valid reference
(the PSNR/SSIM data range); a second pass feeds `MetricAccumulator` window by window and, when
asked, writes the absolute-error raster. Memory is bounded by one window.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from torch.utils.data import DataLoader, Dataset

from p2p.bands.baselines import Baselines, BaselineScore, skill
from p2p.bands.normalization import BandStats
from p2p.core.config import SceneConfig
from p2p.core.errors import AlignmentError, InputError
from p2p.infer.calibration import UncertaintyAccumulator
from p2p.infer.evalpicture import TILE, TileError, pick, tile_errors, write_picture
from p2p.infer.seams import seam_score
from p2p.infer.spectral import SpectralAccumulator, parse_index
from p2p.infer.translator import pick_device
from p2p.model.bundle import Bundle, BundleMeta
from p2p.model.metrics import MetricAccumulator, score_batches
from p2p.raster import Grid, SceneReader, geotiff, open_aligned

log = logging.getLogger(__name__)

#: Side of the windows a scene is scored in. SSIM windows never cross window borders.
EVAL_WINDOW = 1024
Target = SceneConfig | str | Path | Sequence[str | Path]


def _windows(grid: Grid, side: int) -> Iterator[Window]:
    for row in range(0, grid.height, side):
        for col in range(0, grid.width, side):
            yield Window(col, row, min(side, grid.width - col), min(side, grid.height - row))


def _target_spec(
    target: Target, bands: Sequence[int] | None, nodata: float | None
) -> tuple[list[str], Sequence[int] | None, float | None]:
    """Paths, band selection and nodata of the reference."""
    if isinstance(target, SceneConfig):
        if target.target is None:
            raise InputError(target.scene_id, "the scene has no target to evaluate against")
        return (
            list(target.target),
            bands if bands is not None else target.target_bands,
            nodata if nodata is not None else target.nodata,
        )
    if isinstance(target, str | Path):
        paths = [p.strip() for p in str(target).split(",") if p.strip()]
    else:
        paths = [str(p) for p in target]
    return paths, bands, nodata


def _pair(
    pred: SceneReader, ref: SceneReader, window: Window
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(C, h, w)` float64 prediction and reference and `(h, w)` bool both-valid mask."""
    p, pv = pred.read(window)
    t, tv = ref.read(window)
    return p.astype(np.float64), t.astype(np.float64), pv & tv


def _data_range(pred: SceneReader, ref: SceneReader, side: int) -> tuple[list[float], int]:
    """First pass: per-band span (max − min) of the valid reference, and the pixel count."""
    low = np.full(ref.count, np.inf)
    high = np.full(ref.count, -np.inf)
    count = 0
    for window in _windows(pred.grid, side):
        _, t, valid = _pair(pred, ref, window)
        if valid.any():
            values = t[:, valid]
            low = np.minimum(low, values.min(axis=1))
            high = np.maximum(high, values.max(axis=1))
            count += int(valid.sum())
    spans = [float(h - lo) if h > lo else 1.0 for lo, h in zip(low, high, strict=True)]
    return spans, count


def _baseline_score(
    model: BundleMeta | None, source: Sequence[str] | None, pred: SceneReader
) -> tuple[BaselineScore, SceneReader] | None:
    """The baselines' scorer and the source read on the prediction's grid, when asked."""
    if model is None or not source:
        return None
    if not model.baselines:
        raise InputError("model.json", "the bundle holds no baselines (written before format 2)")
    reader = open_aligned(list(source), pred.grid, None, model.source_nodata, "nearest")
    if reader.count != model.in_channels:
        reader.close()
        raise InputError(source[0], f"has {reader.count} band(s), the model {model.in_channels}")
    return BaselineScore(Baselines.from_dict(model.baselines)), reader


def _spread_reader(
    path: str | Path | None, pred: SceneReader, pixels: int
) -> tuple[UncertaintyAccumulator, SceneReader] | None:
    """The uncertainty scorer and the uncertainty raster read on the prediction's grid."""
    if path is None:
        return None
    reader = open_aligned([str(path)], pred.grid, None, None, "nearest")
    if reader.count != pred.count:
        reader.close()
        raise InputError(path, f"has {reader.count} band(s), the prediction {pred.count}")
    return UncertaintyAccumulator(pred.count, pixels), reader


def evaluate(
    prediction: str | Path,
    target: Target,
    error_map: str | Path | None = None,
    target_bands: Sequence[int] | None = None,
    nodata: float | None = None,
    resampling: str = "bilinear",
    window: int = EVAL_WINDOW,
    progress: Callable[[int, int], None] | None = None,
    model: BundleMeta | None = None,
    source: Sequence[str] | None = None,
    picture: str | Path | None = None,
    indices: Sequence[str] = (),
    uncertainty: str | Path | None = None,
) -> dict[str, Any]:
    """Score a prediction against a reference over the pixels valid in both.

    Given the model's bundle metadata and the source scene, the baselines stored in the bundle
    (constant mean, per-pixel linear regression) are scored on the same pixels, and PSNR/SSIM
    use the bundle's data range (the span of the training target statistics, as in training
    and the pipeline's evaluate stage) instead of the reference's max − min.

    Args:
        prediction: The predicted raster; its grid is the evaluation grid.
        target: The reference: a `SceneConfig` (its `target`, `target_bands`, `nodata`), a
            path, comma-joined band files, or a list of band files.
        error_map: When given, write `|prediction − reference|` here (float32 GeoTIFF on the
            prediction's grid, NaN where either is invalid).
        target_bands: 1-based band selection of the reference (overrides the scene's).
        nodata: Nodata override for the reference.
        resampling: How the reference is warped when its grid differs.
        window: Side of the scoring windows (SSIM is computed inside windows).
        progress: Called with (windows done, windows total) during scoring.
        model: The bundle's metadata (`read_meta`), to score its baselines beside the model.
        source: The source scene's files (band files stacked in order), needed with `model`.
        picture: When given, draw (source |) prediction | target | error of the windows with
            the largest, median and smallest error here (`p2p.infer.evalpicture`).
        indices: Normalized differences to score, ``NAME=A,B`` with band names or 1-based
            numbers (`p2p.infer.spectral.parse_index`).
        uncertainty: An uncertainty raster of the prediction (`p2p predict --uncertainty`), one
            band per predicted band: how well it ranks the absolute errors
            (`p2p.infer.calibration`), over the pixels valid in all three.

    Returns:
        ``{"prediction", "target", "pixels", "data_range", "data_range_from", "bands":
        [{"name", "mae", "rmse", "psnr", "ssim", "count"}], "overall": {"mae", "rmse", "psnr",
        "ssim"}, "error_map"}``, metrics in target units (see `MetricAccumulator`); with
        `model`, also ``"baselines": {"linear": {"mae"}, "mean": {"mae"}}`` and ``"skill"``
        (model MAE / linear MAE). Always ``"spectral"`` (``{"sam": {"mean", "p95",
        "pixels"} (degrees; None for one band), "indices": [{"name", "bands", "mae",
        "linear_mae", "pixels"}]}``, `p2p.infer.spectral`) and ``"seams"`` (the seam score
        from the prediction's window layout against the reference, `p2p.infer.seams`; None
        when the prediction carries no layout). With `uncertainty`, ``"uncertainty": {"path",
        "method", "bands": [{"name", "spearman", "mae_most_uncertain", "mae_least_uncertain",
        "pixels", "sampled"}]}``.

    Raises:
        InputError: a missing or unreadable file, or band counts that differ.
        AlignmentError: the two do not overlap, or share no valid pixel.
    """
    paths, bands, ref_nodata = _target_spec(target, target_bands, nodata)
    if model is not None and not source:
        raise InputError(str(prediction), "scoring the model's baselines needs its source scene")
    with SceneReader(prediction) as pred:
        ref = open_aligned(paths, pred.grid, bands, ref_nodata, resampling)
        with ref:
            if ref.count != pred.count:
                raise InputError(
                    paths[0],
                    f"has {ref.count} band(s) but the prediction {prediction} has {pred.count}",
                )
            specs = [parse_index(text, ref.band_names) for text in indices]
            spans, pixels = _data_range(pred, ref, window)
            if pixels == 0:
                raise AlignmentError(prediction, f"shares no valid pixel with {', '.join(paths)}")
            if model is not None:
                spans = BandStats.from_dict(model.target_stats).spans()
            metrics = MetricAccumulator(spans)
            spectral = SpectralAccumulator(pred.count, specs)
            score = _baseline_score(model, source, pred)
            spread = _spread_reader(uncertainty, pred, pixels)
            tiles: list[TileError] | None = [] if picture is not None else None
            extra = (score, tiles, spectral, spread)
            if error_map is None:
                _score(pred, ref, metrics, window, None, progress, *extra)
            else:
                with geotiff.publishing(error_map, "gtiff") as work:
                    profile = geotiff.profile(pred.grid, pred.count, "float32", math.nan)
                    with rasterio.open(work, "w", **profile) as dst:
                        _score(pred, ref, metrics, window, dst, progress, *extra)
            if picture is not None and tiles:
                write_picture(picture, pick(tiles), pred, ref, score[1] if score else None)
            seams = seam_score(pred, ref)
    result = metrics.compute()
    if score is not None:
        score[1].close()
        baselines = score[0].compute()
        result |= {"baselines": baselines, "skill": skill(result["overall"]["mae"], baselines)}
    for entry, name in zip(result["bands"], ref.band_names, strict=True):
        entry["name"] = name
    result["spectral"] = {"sam": spectral.sam(), "indices": spectral.index_scores()}
    result["seams"] = seams
    if spread is not None:
        spread[1].close()
        names = list(ref.band_names)
        result["uncertainty"] = {"path": str(uncertainty), **spread[0].compute(names)}
    return {
        "prediction": str(prediction),
        "target": paths,
        "pixels": pixels,
        "data_range": spans,
        "data_range_from": "model target statistics" if model else "reference max - min",
        **result,
        "error_map": None if error_map is None else str(error_map),
        "picture": str(picture) if picture is not None and Path(picture).is_file() else None,
    }


def _score(
    pred: SceneReader,
    ref: SceneReader,
    metrics: MetricAccumulator,
    side: int,
    dst: Any,
    progress: Callable[[int, int], None] | None,
    baselines: tuple[BaselineScore, SceneReader] | None = None,
    tiles: list[TileError] | None = None,
    spectral: SpectralAccumulator | None = None,
    spread: tuple[UncertaintyAccumulator, SceneReader] | None = None,
) -> None:
    """Second pass: accumulate metrics (and the baselines', the spectral fidelity and the
    uncertainty's ranking on the same pixels), write error-map windows (when `dst` is open)
    and collect tile errors (into `tiles`, if a list)."""
    windows = list(_windows(pred.grid, side))
    tile = min(TILE, pred.grid.height, pred.grid.width)
    for n, window in enumerate(windows, start=1):
        p, t, valid = _pair(pred, ref, window)
        linear = None
        if baselines is not None:
            src, src_valid = baselines[1].read(window)
            valid &= src_valid
            baselines[0].update(src[:, valid], t[:, valid])
            linear = baselines[0].fit.predict_pixels("linear", src[:, valid])
        if spread is not None:
            u, u_valid = spread[1].read(window)
            both = valid & u_valid  # the other scores keep their pixels
            spread[0].update(u[:, both], np.abs(p - t)[:, both])
        if spectral is not None:
            spectral.update(p[:, valid], t[:, valid], linear)
        if valid.any():
            metrics.update(
                torch.from_numpy(p)[None],
                torch.from_numpy(t)[None],
                torch.from_numpy(valid)[None, None],
            )
            if dst is not None:
                error = np.where(valid[None], np.abs(p - t), np.nan).astype(np.float32)
                dst.write(error, window=window)
            if tiles is not None:
                tiles += tile_errors(p, t, valid, window, tile)
        if progress:
            progress(n, len(windows))


@torch.no_grad()
def evaluate_chips(
    bundle: Bundle,
    chips: Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    batch_size: int = 8,
    device: str = "auto",
) -> dict[str, Any]:
    """Metrics of a bundle's generator over normalized chips, in target units.

    Args:
        bundle: The model bundle.
        chips: ``(source (Cs, S, S), target (Ct, S, S), valid (1, S, S))`` items normalized
            with the bundle's statistics (e.g. a `ChipDataset` split).
        batch_size: Chips per forward pass.
        device: auto, cpu or cuda.

    The data range of each band is the span of the bundle's target statistics (as in
    training's validation), so these numbers match the last epoch's validation metrics.

    Returns:
        `MetricAccumulator.compute()`: per-band and overall MAE, RMSE, PSNR (dB), SSIM.
    """
    dev = pick_device(device)
    generator = bundle.generator.to(dev).eval()
    stats = BandStats.from_dict(bundle.meta.target_stats)
    batches = DataLoader(chips, batch_size=batch_size)
    return score_batches(batches, lambda x: generator(x.to(dev)), stats)
