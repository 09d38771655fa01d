"""Tiling: cut one scene pair into paired chips in a resumable Zarr v3 chip store.

The scene's chip grid (chips of `chip_size` every `stride` pixels, the last row and column
reaching past the edge where needed so the whole scene is covered) is cut into blocks of
`block_chips` x `block_chips` chips. Each block is one Dask task: it reads its window of the
source (plus the halo that overlapping chips need) and the same window of the target warped onto
the source grid, writes its chips into its own shard of the store and then its done-marker.
Memory stays bounded by the blocks in flight, whatever the scene size; a rerun skips finished
blocks. See `p2p.data.chipstore` for the layout.

Speed (benchmarks/tiling.py): a block's window is read once per side (no per-chip reads, no
warp when the target lies on the source grid), each chip taken as a view of the window and
encoded from there into the block's own shard, one file or object per array (`p2p.data.shards`;
zarr's own write path costs three times the compression), so the CPU cost per pixel is GDAL's
decode plus one copy and one LZ4 pass. A local cluster runs the blocks on threads of this process.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
from distributed import Client, as_completed
from rasterio.windows import Window

from p2p.core import files
from p2p.core.config import DaskConfig, SceneConfig, TilingConfig
from p2p.core.dask_client import dask_client
from p2p.core.errors import InputError
from p2p.core.files import Location
from p2p.data import chipstore
from p2p.data.chipgrid import Block, ChipGrid, chip_views
from p2p.raster import Grid, SceneReader, open_aligned

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None elsewhere (macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


# glibc keeps freed block buffers in its arenas, so a process tiling on threads crept from 305
# to 345 MB peak RSS between 4 and 64 blocks; trimming keeps it flat (Dask's nanny does the
# same for worker processes through MALLOC_TRIM_THRESHOLD_). Trimming after every block costs
# ~13% CPU (the next block faults its buffers in again); every 16th block keeps 64 blocks
# within ~5% of 4 blocks' peak for ~2%.
MALLOC_TRIM = _malloc_trim()
TRIM_EVERY = 16
_blocks_done = itertools.count(1)


@dataclass(frozen=True)
class BlockJob:
    """Everything a worker needs to tile one block (picklable)."""

    folder: str
    scene: SceneConfig
    grid: Grid
    chips: ChipGrid
    block: Block
    resampling: str


def _open_pair(job: BlockJob) -> tuple[SceneReader, SceneReader]:
    scene = job.scene
    assert scene.target is not None
    source = SceneReader(scene.source, bands=scene.source_bands, nodata=scene.nodata)
    target = open_aligned(
        scene.target,
        job.grid,
        bands=scene.target_bands,
        nodata=scene.nodata,
        resampling=job.resampling,
    )
    return source, target


def _index_rows(job: BlockJob, valid_fraction: np.ndarray) -> list[dict[str, Any]]:
    """The index rows of a block's chips, in slot order."""
    k, s, b = job.chips.chip_size, job.chips.stride, job.block
    cells = [(r, c) for r in range(b.row0, b.row1) for c in range(b.col0, b.col1)]
    scene_id = job.scene.scene_id  # a Path parse per call: once per block, not per chip
    rows = []
    for n, (r, c) in enumerate(cells):
        bounds = job.grid.window_bounds(Window(c * s, r * s, k, k))
        rows.append(
            {
                "chip": b.slot0 + n,
                "row": r,
                "col": c,
                "x0": c * s,
                "y0": r * s,
                "minx": bounds.left,
                "miny": bounds.bottom,
                "maxx": bounds.right,
                "maxy": bounds.top,
                "valid_fraction": float(valid_fraction[n]),
                "scene": scene_id,
                "block": b.name,
            }
        )
    return rows


def tile_block(job: BlockJob) -> int:
    """Read, cut and write the chips of one block; return its count of valid pixels.

    The block's window is read once per side; its chips are views of it, encoded into the
    block's own shard of each array.
    """
    window = job.chips.window(job.block)
    source, target = _open_pair(job)
    with source, target:
        src, src_valid = source.read(window)
        tgt, tgt_valid = target.read(window)
    valid = np.logical_and(src_valid, tgt_valid, out=src_valid)
    k, s, b = job.chips.chip_size, job.chips.stride, job.block
    shape = (b.row1 - b.row0, b.col1 - b.col0, k, s)
    chips = {
        "source": chip_views(src, *shape),
        "target": chip_views(tgt, *shape),
        "valid": chip_views(valid, *shape),
    }
    # counting is exact and ~5x cheaper than a float mean of the bool masks
    fraction = np.array([np.count_nonzero(m) for m in chips["valid"]]) / (k * k)
    chipstore.write_block(job.folder, b.name, b.slot0, chips, _index_rows(job, fraction))
    n_valid = int(np.count_nonzero(valid))
    del chips, valid, src, tgt
    if MALLOC_TRIM is not None and next(_blocks_done) % TRIM_EVERY == 0:
        MALLOC_TRIM(0)
    return n_valid


@dataclass(frozen=True)
class ScenePlan:
    """A validated scene: its grid, chip grid and the store's layout and metadata."""

    grid: Grid
    chips: ChipGrid
    layout: chipstore.StoreLayout
    meta: dict[str, Any]


def plan_scene(scene: SceneConfig, tiling: TilingConfig) -> ScenePlan:
    """Validate a training scene and plan its chips, before any work.

    Raises:
        InputError: no target, unreadable files, band files on different grids, chip larger
            than the scene.
        AlignmentError: the target does not overlap the source.
    """
    if scene.target is None:
        raise InputError(scene.source[0], "a training scene needs a target")
    with SceneReader(scene.source, bands=scene.source_bands, nodata=scene.nodata) as source:
        grid = source.grid
        if tiling.chip_size > min(grid.width, grid.height):
            raise InputError(
                scene.source[0],
                f"chip_size {tiling.chip_size} is larger than the scene "
                f"({grid.width}x{grid.height} px)",
            )
        with open_aligned(
            scene.target,
            grid,
            bands=scene.target_bands,
            nodata=scene.nodata,
            resampling=tiling.resampling,
        ) as target:
            chips = ChipGrid(
                grid.height, grid.width, tiling.chip_size, tiling.stride, tiling.block_chips
            )
            layout = chipstore.StoreLayout(
                chips.n_slots,
                tiling.block_chips**2,
                tiling.chip_size,
                source.count,
                target.count,
                source.dtype,
                target.dtype,
                tiling.compression,
            )
            meta = {
                "scene": scene.scene_id,
                "source": _side_meta(source),
                "target": _side_meta(target) | {"resampled": target.resampled},
                "crs": grid.crs.to_wkt() if grid.crs else None,
                "transform": list(grid.transform)[:6],
                "width": grid.width,
                "height": grid.height,
                "chip_size": tiling.chip_size,
                "stride": tiling.stride,
                "block_chips": tiling.block_chips,
            }
    return ScenePlan(grid, chips, layout, meta)


def _side_meta(reader: SceneReader) -> dict[str, Any]:
    return {
        "files": reader.paths,
        "band_names": reader.band_names,
        "dtype": reader.dtype,
        "nodata": reader.nodata,
        "count": reader.count,
    }


def run_blocks(client: Client, jobs: list[BlockJob], progress: Progress | None = None) -> int:
    """Run block jobs on `client`, a few in flight per worker thread; return valid pixels.

    Submitting a bounded window of tasks keeps the driver's and workers' memory flat whatever
    the number of blocks.
    """
    limit = 2 * max(sum(client.nthreads().values()), 1)  # type: ignore[no-untyped-call]
    pending = iter(jobs)
    first = [client.submit(tile_block, j, pure=False) for j in islice(pending, limit)]
    queue = as_completed(first)  # type: ignore[no-untyped-call]
    total_valid = 0
    for done, future in enumerate(queue, start=1):
        total_valid += int(future.result())
        future.release()
        nxt = next(pending, None)
        if nxt is not None:
            queue.add(client.submit(tile_block, nxt, pure=False))  # type: ignore[no-untyped-call]
        if progress is not None:
            progress(done, len(jobs))
    return total_valid


def tile_into(
    folder: Location,
    plan: ScenePlan,
    scene: SceneConfig,
    tiling: TilingConfig,
    dask: DaskConfig,
    progress: Progress | None = None,
    client: Client | None = None,
) -> dict[str, Any]:
    """Tile a planned scene pair into the chip store at `folder`, resuming its finished blocks.

    Args:
        folder: The store's folder (created or resumed); an ``s3://`` prefix writes the
            chips straight into the bucket, from whichever worker tiles a block.
        plan: `plan_scene`'s answer for `scene` and `tiling`.
        scene: The scene pair.
        tiling: Chip size, stride, block size, resampling of the target.
        dask: Where the Dask work runs (ignored when `client` is given).
        progress: Called with (blocks done, blocks to do) as blocks finish.
        client: An existing Dask client to use instead of starting one from `dask`.

    Returns:
        The summary: n_chips, chips_kept, bands, dtypes, nodata, chip_size, stride, scene id.

    Raises:
        InputError: no valid pixel where source and target overlap (the folder is removed).
    """
    chipstore.create_store(folder, plan.layout, plan.meta)
    done = chipstore.done_blocks(folder)
    jobs = [
        BlockJob(str(folder), scene, plan.grid, plan.chips, b, tiling.resampling)
        for b in plan.chips.blocks()
        if b.name not in done
    ]
    log.info("tile %s: %d of %d blocks to do", scene.scene_id, len(jobs), len(done) + len(jobs))
    if jobs:
        if client is not None:
            run_blocks(client, jobs, progress)
        else:
            # Threads, not processes: GDAL, LZ4 and numpy copies release the GIL, so two
            # threads tile as fast as two processes, and the cluster starts in ~0.3 s
            # instead of ~3 s (a 4096² scene: 1.0 s instead of 4.3 s end to end).
            with dask_client(dask, processes=False) as own:
                run_blocks(own, jobs, progress)
    index = chipstore.write_index(folder)
    if not (index["valid_fraction"] > 0).any():
        files.remove_tree(folder)
        raise InputError(
            scene.source[0],
            "no valid pixel where source and target overlap (all nodata? set `nodata`)",
        )
    return _summary(plan, index, tiling)


def _summary(plan: ScenePlan, index: Any, tiling: TilingConfig) -> dict[str, Any]:
    meta = plan.meta
    return {
        "scene": meta["scene"],
        "n_chips": len(index),
        "chips_kept": int((index["valid_fraction"] >= tiling.min_valid_fraction).sum()),
        **chipstore.sides_summary(meta),
        "chip_size": tiling.chip_size,
        "stride": tiling.stride,
        "store": chipstore.STORE,
    }
