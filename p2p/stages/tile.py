"""Stage `tile`: one scene pair → ``{workspace}/tile/{key}/`` (a chip store; resumes blocks)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2p.core import storage
from p2p.core.cache import KeyParts, StageRecord, fingerprint_file, run_stage
from p2p.core.config import DaskConfig, SceneConfig, TilingConfig
from p2p.stages.stage import Progress, Stage

if TYPE_CHECKING:
    from distributed import Client

NAME = "tile"
VERSION = 1


def key_parts(scene: SceneConfig, tiling: TilingConfig) -> KeyParts:
    """The scene and tiling settings, and every source and target file's fingerprint.

    `min_valid_fraction` is left out: it only filters chips in the dataset stage, so changing
    it must not re-tile. So is `compression`: it changes bytes on disk, never chip values, so a
    store tiled with either codec serves both (a resumed run keeps the store's codec).

    Raises:
        InputError: a file is missing.
    """
    files = [*scene.source, *(scene.target or [])]
    for f in files:
        storage.require_file(f)
    config = {
        "scene": scene.model_dump(mode="json"),
        "tiling": tiling.model_dump(mode="json", exclude={"min_valid_fraction", "compression"}),
    }
    return KeyParts(NAME, VERSION, config, [fingerprint_file(f) for f in files])


def run(
    workspace: str | Path,
    scene: SceneConfig,
    tiling: TilingConfig,
    dask: DaskConfig,
    progress: Progress | None = None,
    client: Client | None = None,
) -> StageRecord:
    """Tile one scene pair (see `p2p.data.tiling`); cached per key, resumes finished blocks.

    Args:
        workspace: Workspace root.
        scene: The scene pair (source, target, bands, nodata override, name).
        tiling: Chip size, stride, block size, resampling of the target.
        dask: Where the Dask work runs (ignored when `client` is given).
        progress: Called with (blocks done, blocks to do) as blocks finish.
        client: An existing Dask client to use instead of starting one from `dask`.

    Returns:
        The record; summary holds n_chips, chips_kept, bands, dtypes, nodata, chip_size,
        stride and the scene id.

    Raises:
        InputError: bad input (see `plan_scene`), or no valid pixel where source and target
            overlap (the folder is then removed). Raised before work starts except the last.
    """
    from p2p.data.tiling import plan_scene, tile_into

    plan = plan_scene(scene, tiling)  # bad input fails here, with its own clear message
    parts = key_parts(scene, tiling)

    def build(folder: Path | str) -> dict[str, Any]:
        return tile_into(folder, plan, scene, tiling, dask, progress, client)

    # in a bucket, the chips go straight there (from whichever Dask worker tiles a block)
    return run_stage(workspace, parts, build, build_in_bucket=build)


STAGE = Stage(NAME, VERSION, key_parts, run, task="tile-scene", retries=2, unit="blocks")
