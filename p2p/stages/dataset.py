"""Stage `dataset`: tile/import folders → ``{workspace}/dataset/{key}/`` (split, statistics)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from p2p.core import storage
from p2p.core.cache import KeyParts, StageRecord, finished_stage, run_stage
from p2p.core.config import DatasetConfig, TilingConfig
from p2p.stages.stage import Stage

NAME = "dataset"
#: 2: baselines.json, chip counts and baseline scores in the summary
VERSION = 2

Tiles = Sequence[StageRecord | str | Path]


def key_parts(tiles: Tiles, config: DatasetConfig, tiling: TilingConfig) -> KeyParts:
    """The split settings, tiling's chip filter, and the tile stages' keys in scene order."""
    settings = {
        "dataset": config.model_dump(mode="json"),
        "tiling": {"min_valid_fraction": tiling.min_valid_fraction},
    }
    return KeyParts(NAME, VERSION, settings, [finished_stage(t).key for t in tiles])


def run(
    workspace: str | Path, tiles: Tiles, config: DatasetConfig, tiling: TilingConfig
) -> StageRecord:
    """Filter, split and compute band statistics (see `p2p.data.dataset`); cached per key.

    Args:
        workspace: Workspace root.
        tiles: Finished tile or import stages (records or folders), in scene order.
        config: Split settings.
        tiling: Its `min_valid_fraction` filters the chips.

    Returns:
        The record; summary holds n_train, n_val, band names, dtypes, nodata, chip_size and
        the tile folders.

    Raises:
        StageError: a folder is not a finished tile stage, scenes disagree in bands or chip
            size, or no chip passes `min_valid_fraction`.
    """
    from p2p.data.dataset import build_dataset, check_tiles

    dirs = [_folder(t.path if isinstance(t, StageRecord) else t) for t in tiles]
    check_tiles(dirs)
    parts = key_parts(tiles, config, tiling)

    def build(folder: Path) -> dict[str, Any]:
        return build_dataset(folder, dirs, config, tiling)

    return run_stage(workspace, parts, build)


def _folder(path: str | Path) -> str:
    """A tile folder as the dataset records it: resolved, or a URL as given."""
    return str(path) if storage.is_remote(path) else str(Path(path).resolve())


STAGE = Stage(NAME, VERSION, key_parts, run, task="assemble-dataset", retries=2)
