"""Seamless, streaming, resumable prediction of whole scenes with a model bundle.

A scene is cut into windows of `tile_size` with `overlap` pixels of context on each side
(`p2p.infer.windows`); the windows are read reflect-padded, batched to the generator, and
blended with weights that sum to one at every pixel, row of windows by row of windows
(`p2p.infer.strips`). A row strip (the centre region of one row of windows) is complete once
the rows of windows below it that reach into it are done; it is then denormalized, cast to the
target dtype, and handed to a `RowSink` that writes whole block rows of the output. Memory holds
the strips in flight (about ``tile_size + stride`` rows of the scene width, float32, per output
band) and a few batches of windows, whatever the scene's size.

Resume: the output is written at ``.NAME.partial.tif`` beside NAME (`p2p.raster.partial`).
After every window row that completes a strip, the run commits the rows on disk together with
its carry: the blend accumulators of the strips in flight and the rows that do not fill a block
row yet. A rerun with the same bundle, scene and settings restores them and goes on with the
next window row, so a kill costs only the window row in progress (without a readable carry it
restarts at the strip holding the first unwritten row). As every window row is computed from
the same pixels in the same batches, and sums run in the same order, the result is
bit-identical to an uninterrupted run. Only the complete file is renamed (or assembled into a
COG) onto NAME.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from p2p.bands.normalization import BandStats
from p2p.core.config import PredictConfig, SceneConfig
from p2p.core.errors import ConfigError, InputError
from p2p.infer.provenance import output_tags, scene_job
from p2p.infer.strips import (
    Progress,
    StripLoop,
    StripPlan,
    compute_strips,
    strip_values,
    windows_per_read,
    write_strips,
)
from p2p.infer.windows import axis_layout, round_up
from p2p.model.meta import BundleMeta, BundleRef
from p2p.raster import Grid, SceneReader, geotiff
from p2p.raster.partial import RowSink

log = logging.getLogger(__name__)

#: What the uncertainty raster holds (its `P2P_UNCERTAINTY` tag).
UNCERTAINTY = (
    "per-pixel population standard deviation of the 8 test-time symmetries' outputs, in target "
    "units, blended across windows with the prediction's weights"
)
#: The same with ``predict.samples`` (`p2p.infer.sampling`).
UNCERTAINTY_SAMPLED = (
    "per-pixel population standard deviation of {} dropout-on samples of each of the 8 "
    "test-time symmetries' outputs, in target units, blended across windows with the "
    "prediction's weights"
)


@dataclass(frozen=True)
class PredictResult:
    """What `predict_scene` wrote.

    Attributes:
        output: The prediction raster.
        scene: Scene id.
        width: Columns (the source's).
        height: Rows (the source's).
        bands: Output bands.
        dtype: Output dtype (the bundle's target dtype).
        nodata: Output nodata value (NaN for float outputs without one).
        strips: Row strips in the scene.
        resumed_rows: Rows already written by an earlier, interrupted run (0 when fresh).
        seconds: Wall time.
        uncertainty: The uncertainty raster (``config.uncertainty``), else None.
    """

    output: str
    scene: str
    width: int
    height: int
    bands: int
    dtype: str
    nodata: float
    strips: int
    resumed_rows: int
    seconds: float
    uncertainty: str | None = None


def _model_multiple(meta: BundleMeta) -> int:
    return int(2**meta.model.num_downs)


def _open_source(scene: SceneConfig, bundle: BundleRef, config: PredictConfig) -> SceneReader:
    """Open and check the source against the bundle, before any work."""
    override = config.nodata if config.nodata is not None else scene.nodata
    reader = SceneReader(scene.source, bands=scene.source_bands, nodata=override)
    if reader.nodata is None and bundle.meta.source_nodata is not None:
        reader.close()
        reader = SceneReader(scene.source, scene.source_bands, bundle.meta.source_nodata)
    if reader.count != bundle.meta.in_channels:
        reader.close()
        raise InputError(scene.source[0], _band_count_problem(reader.count, bundle.meta))
    return reader


def _band_count_problem(count: int, meta: BundleMeta) -> str:
    """A band-count mismatch, with the way to choose bands (or to give more)."""
    want = meta.in_channels
    text = f"has {count} band(s) but the model expects {want} ({', '.join(meta.source_bands)})"
    if count > want:
        example = ",".join(str(i) for i in range(1, want + 1))
        return (
            f"{text}; choose {want} of its bands with `p2p predict --bands {example}` "
            f"(source_bands: [{example.replace(',', ', ')}] in a config scene)"
        )
    return f"{text}; give a scene with those bands (band files join with commas: a.tif,b.tif)"


def resolve_window(meta: BundleMeta, config: PredictConfig) -> tuple[int, int]:
    """(tile_size, overlap) in pixels: the configured ones, by default the bundle's chip size
    (the window the model saw in training) and an eighth of it.

    Raises:
        ConfigError: The overlap is not under half the window, or the window is not a multiple
            of the model's input multiple.
    """
    try:
        tile, overlap = config.window(int(meta.chip_size))
    except ValueError as exc:
        raise ConfigError("predict.overlap", str(exc)) from None
    multiple = _model_multiple(meta)
    if tile % multiple:
        raise ConfigError(
            "predict.tile_size",
            f"{tile} is not a multiple of the model's input multiple {multiple}",
        )
    return tile, overlap


def _plan(reader: SceneReader, bundle: BundleRef, config: PredictConfig, where: str) -> StripPlan:
    """Lay out the windows and resolve output dtype and nodata; errors before any work."""
    multiple = _model_multiple(bundle.meta)
    tile, overlap = resolve_window(bundle.meta, config)
    try:
        ly, lx = (
            axis_layout(n, tile, overlap, multiple, config.blend)
            for n in (reader.grid.height, reader.grid.width)
        )
    except ValueError as exc:
        raise InputError(
            where, f"grid {reader.grid.width}x{reader.grid.height} px is too small: {exc}"
        ) from None
    meta = bundle.meta
    dtype = str(meta.target_dtype)
    nodata = meta.target_nodata
    return StripPlan(
        ly=ly,
        lx=lx,
        source_stats=BandStats.from_dict(meta.source_stats),
        target_stats=BandStats.from_dict(meta.target_stats),
        dtype=dtype,
        nodata=float(nodata) if nodata is not None else geotiff.default_nodata(dtype),
        batch_size=config.batch_size,
    )


def check_scene(bundle: BundleRef, scene: SceneConfig, config: PredictConfig) -> Grid:
    """Raise what `predict_scene` would raise about the inputs, without doing any work (nor
    loading the weights or torch, unless the runtime or a CUDA device has to be checked).

    Returns:
        The scene's grid (the prediction's).
    """
    if config.runtime != "torch" or config.device == "cuda" or config.samples:
        from p2p.infer.runtime import check_runtime

        check_runtime(bundle, config)
    with _open_source(scene, bundle, config) as reader:
        _plan(reader, bundle, config, scene.source[0])
        return reader.grid


def _streaming_cache(reader: SceneReader, bundle: BundleRef, config: PredictConfig) -> Any:
    """GDAL's block cache: the source's block rows that one row of windows reads, across the
    scene's width, and one read's columns of the target (`p2p.infer.strips.windows_per_read`),
    aligned to blocks.

    A row of windows is read left to right, and the next row starts inside the last block row
    of this one (`tile` is rarely a multiple of the block height): a cache that drops those
    blocks before the next row comes back to them decodes them twice. With the full width kept
    (2 block rows for a 256-row tile on 256-row blocks) each block is decoded once: p2p's reads
    of a 12288² 3-band uint16 scene took 2.5 s of CPU instead of 5.7 s with a 16 MB cache. It
    grows with the width, as the strips in flight do, never with the height.
    """
    tile, overlap = resolve_window(bundle.meta, config)
    # taller blocks (a striped file of few strips) are re-decoded rather than held whole
    block_rows = min(reader.block_shape[0], 2 * geotiff.BLOCK)
    source_rows = round_up(tile, block_rows) + block_rows  # at any alignment of a read
    source = reader.count * np.dtype(reader.dtype).itemsize * source_rows * reader.grid.width
    stride = tile - 2 * overlap
    read = (windows_per_read(stride, config.batch_size) - 1) * stride + tile
    columns = min(reader.grid.width, read + 2 * geotiff.BLOCK)
    target = int(bundle.meta.out_channels) * np.dtype(bundle.meta.target_dtype).itemsize
    return geotiff.block_cache(source + target * columns * (tile + 2 * geotiff.BLOCK))


def predict_scene(
    bundle: BundleRef,
    scene: SceneConfig,
    output: str | Path,
    config: PredictConfig,
    progress: Progress | None = None,
) -> PredictResult:
    """Translate a whole scene with a bundle's generator into a raster on the source's grid.

    Args:
        bundle: The model bundle: a `Bundle` (loaded: its generator is moved to the chosen
            device) or a `BundleRef`, whose weights the torch runtime loads (``runtime:
            onnx`` runs its ``model.onnx`` and never imports torch).
        scene: The source scene (`source`, `source_bands`, `nodata`); its target is ignored.
        output: The raster to write (GeoTIFF, or COG when ``config.output_format == "cog"``);
            with ``config.uncertainty`` the test-time spread goes beside it
            (`uncertainty_path`), on the same grid, float32, NaN where the output is nodata.
        config: Window, batch, blend, device and format settings.
        progress: Called with (strips done, strips in the scene) after each strip.

    Returns:
        What was written. Output: the source's exact grid, the bundle's target dtype and
        units, nodata (the bundle's target nodata, else 0 for unsigned, the minimum for signed
        integers, NaN for floats) where the source was invalid; provenance in the tags.

    Raises:
        InputError: a missing or unreadable file, a band count other than the model's, or a
            grid too small for the model; raised before any output is created.
        ConfigError: `tile_size` is not a multiple of the model's input multiple.
    """
    start = time.perf_counter()
    output = Path(output)
    with (
        _open_source(scene, bundle, config) as reader,
        _streaming_cache(reader, bundle, config),
    ):
        plan = _plan(reader, bundle, config, scene.source[0])
        from p2p.infer.runtime import open_windows  # a runtime: only when windows are run

        windows = open_windows(bundle, config)
        output.parent.mkdir(parents=True, exist_ok=True)
        sinks = _open_sinks(bundle, scene, config, output, reader.grid, plan)
        rows_done = sinks[0].rows_done
        write_strips(reader, windows, plan, sinks, progress)
        for sink in reversed(sinks):  # the prediction last: once it exists, both do
            sink.publish(config.output_format)
    return PredictResult(
        output=str(output),
        scene=scene.scene_id,
        width=plan.lx.size,
        height=plan.ly.size,
        bands=int(bundle.meta.out_channels),
        dtype=plan.dtype,
        nodata=plan.nodata,
        strips=plan.ly.count,
        resumed_rows=rows_done,
        seconds=round(time.perf_counter() - start, 3),
        uncertainty=str(uncertainty_path(output)) if config.uncertainty else None,
    )


def uncertainty_path(output: Path) -> Path:
    """Where the uncertainty raster of a prediction goes: ``NAME.uncertainty.tif`` beside it."""
    return output.with_name(f"{output.stem}.uncertainty{output.suffix}")


def _open_sinks(
    bundle: BundleRef,
    scene: SceneConfig,
    config: PredictConfig,
    output: Path,
    grid: Grid,
    plan: StripPlan,
) -> list[RowSink]:
    """The prediction's resumable output and, with ``config.uncertainty``, the spread's
    (float32, NaN nodata, tagged `P2P_LAYER=uncertainty`); created unless resumed."""
    job = scene_job(bundle, scene, config)
    names = [str(n) for n in bundle.meta.target_bands]
    tags = output_tags(bundle, scene, config, plan)
    layers = [(output, plan.dtype, plan.nodata, names, tags)]
    if config.uncertainty:
        meaning = UNCERTAINTY if not config.samples else UNCERTAINTY_SAMPLED.format(config.samples)
        spread_tags = tags | {"P2P_LAYER": "uncertainty", "P2P_UNCERTAINTY": meaning}
        spread_names = [f"{n}_spread" for n in names]
        layers.append((uncertainty_path(output), "float32", math.nan, spread_names, spread_tags))
    sinks = []
    for path, dtype, nodata, band_names, layer_tags in layers:
        sink = RowSink(path, job, plan.ly.size)
        if sink.resumed:
            log.info("%s: resuming after row %d", path, sink.rows_done)
        else:
            bands = bundle.meta.out_channels
            geotiff.create(
                sink.partial, grid, bands, dtype, nodata, layer_tags, band_names, config.compress
            )
        sinks.append(sink)
    return sinks


def predict_rows(
    bundle: BundleRef,
    scene: SceneConfig,
    config: PredictConfig,
    rows: Sequence[tuple[int, int]],
    consume: Callable[[int, np.ndarray, np.ndarray], None],
) -> None:
    """The pixels `predict_scene` writes, computed only for the row strips that reach into
    `rows` and handed to `consume` instead of a file (e.g. to score parts of a scene).

    Args:
        bundle: The model bundle.
        scene: The source scene.
        config: The prediction settings (window, overlap, blend, batch, device, runtime, tta).
        rows: Scene row ranges ``[a, b)`` wanted.
        consume: Called once per strip, top to bottom, with ``(first row, values, valid)``:
            values `(C_out, h, width)` in the target's dtype (bit-identical to those rows of
            `predict_scene`'s output; the strip may reach beyond `rows`), valid `(h, width)` bool
            where the source is valid.

    Raises:
        InputError, ConfigError: as `predict_scene`, before any work.
    """
    with _open_source(scene, bundle, config) as reader:
        plan = _plan(reader, bundle, config, scene.source[0])
        ly = plan.ly
        runs: list[list[int]] = []  # consecutive strips whose centre meets a wanted range
        for r in range(ly.count):
            a, b = ly.centre(r)
            if any(max(a, lo) < min(b, hi) for lo, hi in rows):
                if runs and runs[-1][-1] == r - 1:
                    runs[-1].append(r)
                else:
                    runs.append([r])
        if not runs:
            return
        from p2p.infer.runtime import open_windows

        windows = open_windows(bundle, config.model_copy(update={"uncertainty": False}))

        def emit(r: int, acc: np.ndarray, valid: np.ndarray) -> Callable[[], None]:
            values = strip_values(plan, acc, valid)
            return partial(consume, ly.centre(r)[0], values, valid)

        for run in runs:
            loop = StripLoop(ly.covering(*ly.centre(run[0])).start, run[0])
            compute_strips(reader, windows, plan, loop, emit, lambda *_: None, run[-1] + 1)
