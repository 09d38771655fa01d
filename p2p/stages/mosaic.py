"""Stage `mosaic`: predicted scenes → ``{workspace}/mosaic/{key}/mosaic.tif`` on one grid."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2p.core import storage
from p2p.core.cache import KeyParts, StageRecord, fingerprint_file, run_stage
from p2p.core.config import MosaicConfig
from p2p.stages.stage import Progress, Stage, StageReport

if TYPE_CHECKING:
    from p2p.raster.geotiff import Compression, OutputFormat

NAME = "mosaic"
#: 2: a one-scene mosaic on the scene's grid is its prediction's file, tags and all.
VERSION = 2


def key_parts(
    predictions: Sequence[str],
    config: MosaicConfig,
    output_format: OutputFormat,
    compress: Compression = "deflate",
    uncertainty: Sequence[str] | None = None,
) -> KeyParts:
    """The grid settings, format and codec (named only when not deflate), and the predictions'
    fingerprints (their paths carry the predict keys); with `uncertainty`, that it is
    mosaicked too and its rasters' fingerprints (mosaics made before the codec or the
    uncertainty were settings keep their keys).

    Raises:
        InputError: a prediction or uncertainty raster is missing.
    """
    files = [*predictions, *(uncertainty or ())]
    for path in files:
        storage.require_file(path)
    settings: dict[str, Any] = {"mosaic": config.model_dump(mode="json")}
    settings["output_format"] = output_format
    if compress != "deflate":
        settings["compress"] = compress
    if uncertainty:
        settings["uncertainty"] = True
    return KeyParts(NAME, VERSION, settings, [fingerprint_file(p) for p in files])


def run(
    workspace: str | Path,
    predictions: Sequence[str],
    config: MosaicConfig,
    output_format: OutputFormat = "cog",
    compress: Compression = "deflate",
    progress: Progress | None = None,
    uncertainty: Sequence[str] | None = None,
) -> StageRecord:
    """Mosaic the predictions (union of extents, distance-to-edge blending of overlaps; see
    `p2p.infer.mosaic`); a finished mosaic is returned from the cache.

    Args:
        uncertainty: The predictions' uncertainty rasters, in the same order: mosaicked the
            same way onto the same grid as ``mosaic.uncertainty.tif`` (a copy for one scene
            on its own grid, like the prediction's).

    Returns:
        The record; summary holds output, crs, width, height, the number of inputs and
        uncertainty (the uncertainty mosaic, or None).
    """
    from p2p.infer.mosaic import mosaic_scenes

    parts = key_parts(predictions, config, output_format, compress, uncertainty)

    def build(folder: Path) -> dict[str, Any]:
        # with the uncertainty, both mosaics (the same windows) report as one of twice the
        # windows, so the stall watchdog keeps hearing from the second
        first, second = _halves(progress) if uncertainty else (progress, None)
        result = mosaic_scenes(
            predictions,
            folder / "mosaic.tif",
            config,
            output_format=output_format,
            compress=compress,
            progress=first,
        )
        spread = None
        if uncertainty:
            spread = mosaic_scenes(
                uncertainty,
                folder / "mosaic.uncertainty.tif",
                config,
                output_format=output_format,
                compress=compress,
                progress=second,
                extra_tags=_layer_tags(uncertainty[0]),
            ).output
        return {
            "output": result.output,
            "crs": result.crs,
            "width": result.width,
            "height": result.height,
            "inputs": result.inputs,
            "uncertainty": spread,
        }

    return run_stage(workspace, parts, build)


def _halves(progress: Progress | None) -> tuple[Progress | None, Progress | None]:
    """Progress callbacks of two runs of `total` steps each, reported as one of 2 * total."""
    if progress is None:
        return None, None
    report = progress

    def first(done: int, total: int) -> None:
        report(done, 2 * total)

    def second(done: int, total: int) -> None:
        report(total + done, 2 * total)

    return first, second


def _layer_tags(path: str) -> dict[str, str]:
    """The tags that say what an uncertainty raster holds (kept by a blended mosaic of it)."""
    from p2p.raster import open_raster

    with open_raster(path) as ds:
        tags = ds.tags()
    return {k: v for k, v in tags.items() if k in ("P2P_LAYER", "P2P_UNCERTAINTY")}


def report(record: StageRecord, _: Mapping[str, Any]) -> StageReport:
    """The mosaic's quicklook (read from its overviews), for the batch prediction's run page."""
    from p2p.infer.quicklook import quicklook_markdown

    summary = record.summary
    title = f"Mosaic quicklook ({summary['width']} x {summary['height']} px, {summary['crs']})"
    text = quicklook_markdown(summary["output"], title)
    return StageReport("p2p-mosaic-quicklook", "Mosaic quicklook", text)


STAGE = Stage(
    NAME, VERSION, key_parts, run, task="mosaic", retries=2, report=report, unit="windows"
)
