"""Stage `import`: an Export Tiles folder → ``{workspace}/import/{key}/`` (a chip store).

The store has the tile stage's layout, so the dataset stage takes both alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from p2p.core.cache import KeyParts, StageRecord, fingerprint_file, run_stage
from p2p.core.config import ExportTilesConfig, TilingConfig
from p2p.stages.stage import Stage

NAME = "import"
VERSION = 1


def key_parts(scene: ExportTilesConfig, tiling: TilingConfig) -> KeyParts:
    """The folder, the tiling settings, and every chip file's fingerprint.

    Raises:
        InputError: missing folders or unpaired files.
    """
    from p2p.data.arcgis import find_pairs

    folder = Path(scene.export_tiles).resolve()
    inputs = [fingerprint_file(p) for pair in find_pairs(folder) for p in pair]
    config = {
        "export_tiles": str(folder),
        "tiling": tiling.model_dump(mode="json", exclude={"min_valid_fraction", "compression"}),
    }
    return KeyParts(NAME, VERSION, config, inputs)


def run(workspace: str | Path, scene: ExportTilesConfig, tiling: TilingConfig) -> StageRecord:
    """Import the folder's chip pairs into a chip store (cached; resumes finished blocks).

    Args:
        workspace: Workspace root.
        scene: The Export Tiles folder.
        tiling: `chip_size` must equal the exported chip size; `block_chips`² chips per block.

    Returns:
        A record shaped like the tile stage's, usable as input of the dataset stage.

    Raises:
        InputError: missing folders, unpaired files, chips of another size or band layout.
    """
    from p2p.data.arcgis import import_into, plan_export

    plan = plan_export(scene.export_tiles, tiling)
    parts = key_parts(scene, tiling)

    def build(folder: Path) -> dict[str, Any]:
        return import_into(folder, plan, tiling)

    return run_stage(workspace, parts, build)


STAGE = Stage(NAME, VERSION, key_parts, run, task="import-export-tiles", retries=2)
