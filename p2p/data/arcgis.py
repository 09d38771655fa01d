"""Import ArcGIS Pro "Export Training Data For Deep Learning" output (Export Tiles format).

For Pix2Pix, ArcGIS writes the input chips to ``images/`` and the paired chips to ``images2/``
under the same file names (TIFF, PNG or JPEG); this is the layout that arcgis.learn's
``prepare_data`` reads. The import writes the pairs into the same chip store as the tile stage
(stage `import`, `p2p.stages.import_tiles`), so the dataset stage and training treat both alike.
Georeferenced chips (GeoTIFFs, or PNG/JPEG with world files) keep their pixel position on a
common grid, so the spatial train/val split stays spatial; chips without georeference are laid
out in one row in file-name order, where neighbouring exports are usually neighbours on the
ground.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window

from p2p.core.config import TilingConfig
from p2p.core.errors import InputError
from p2p.data import chipstore
from p2p.raster import SceneReader

log = logging.getLogger(__name__)

SUFFIXES = {".tif", ".tiff", ".png", ".jpg", ".jpeg"}


def find_pairs(folder: Path) -> list[tuple[Path, Path]]:
    """Matching (images/x, images2/x) files, sorted by name."""
    images, images2 = folder / "images", folder / "images2"
    for sub in (images, images2):
        if not sub.is_dir():
            raise InputError(
                sub, "missing: an Export Tiles folder for Pix2Pix has images/ and images2/"
            )
    first = {p.name: p for p in images.iterdir() if p.suffix.lower() in SUFFIXES}
    second = {p.name: p for p in images2.iterdir() if p.suffix.lower() in SUFFIXES}
    if not first:
        raise InputError(images, "holds no .tif, .png or .jpg chips")
    missing = sorted(set(first) ^ set(second))
    if missing:
        side = images2 if missing[0] in first else images
        raise InputError(side / missing[0], "has no partner with the same name in the other folder")
    return [(first[name], second[name]) for name in sorted(first)]


def _georef(reader: SceneReader) -> tuple[float, float, float, float] | None:
    """(left, top, xres, yres) of a chip, or None when it carries no georeference."""
    t = reader.grid.transform
    if reader.grid.crs is None or (t.a == 1 and t.e == 1 and t.c == 0 and t.f == 0):
        return None
    return t.c, t.f, abs(t.a), abs(t.e)


def _inspect(
    pairs: list[tuple[Path, Path]], size: int
) -> tuple[list[tuple[int, int]], dict[str, Any]]:
    """Check every chip's size and band count; return pixel offsets (x0, y0) and the meta."""
    refs: list[tuple[float, float, float, float] | None] = []
    sides: list[tuple[tuple[Any, ...], SceneReader, SceneReader]] = []
    for src_path, tgt_path in pairs:
        with SceneReader(src_path) as src, SceneReader(tgt_path) as tgt:
            for path, r in ((src_path, src), (tgt_path, tgt)):
                if r.grid.shape != (size, size):
                    raise InputError(
                        path,
                        f"chip is {r.grid.width}x{r.grid.height} px but tiling.chip_size is "
                        f"{size}; set tiling.chip_size to the exported size",
                    )
            sig = (src.count, src.dtype, tgt.count, tgt.dtype)
            if sides and sig != sides[0][0]:
                raise InputError(
                    src_path, f"bands/dtypes {sig} differ from {pairs[0][0]}: {sides[0][0]}"
                )
            sides.append((sig, src, tgt))
            refs.append(_georef(src))
    positions = _positions(refs, size)
    _, src0, tgt0 = sides[0]
    meta = {
        "source": _side(src0, pairs[0][0]),
        "target": _side(tgt0, pairs[0][1]),
        "crs": src0.grid.crs.to_wkt() if src0.grid.crs else None,
    }
    return positions, meta


def _side(reader: SceneReader, path: Path) -> dict[str, Any]:
    return {
        "files": [str(path.parent)],
        "band_names": reader.band_names,
        "dtype": reader.dtype,
        "nodata": reader.nodata,
        "count": reader.count,
    }


def _positions(
    refs: list[tuple[float, float, float, float] | None], size: int
) -> list[tuple[int, int]]:
    if any(r is None for r in refs):
        return [(i * size, 0) for i in range(len(refs))]
    left = min(r[0] for r in refs if r)
    top = max(r[1] for r in refs if r)
    return [(round((r[0] - left) / r[2]), round((top - r[1]) / r[3])) for r in refs if r]


def _write_block(
    folder: Path, block: int, pairs: list[tuple[Path, Path]], rows: list[dict[str, Any]], size: int
) -> None:
    chips: dict[str, list[np.ndarray]] = {"source": [], "target": [], "valid": []}
    for (src_path, tgt_path), row in zip(pairs, rows, strict=True):
        with SceneReader(src_path) as src, SceneReader(tgt_path) as tgt:
            s, s_valid = src.read(Window(0, 0, size, size))
            t, t_valid = tgt.read(Window(0, 0, size, size))
        chips["source"].append(s)
        chips["target"].append(t)
        chips["valid"].append(s_valid & t_valid)
        row["valid_fraction"] = float(chips["valid"][-1].mean())
        row.update(zip(("minx", "miny", "maxx", "maxy"), src.grid.bounds, strict=True))
    stacked = {k: np.stack(v) for k, v in chips.items()}
    chipstore.write_block(folder, f"0_{block}", rows[0]["chip"], stacked, rows)


@dataclass(frozen=True)
class ExportPlan:
    """A checked Export Tiles folder: its chip pairs, where they lie, the store they fill.

    Attributes:
        folder: The export folder (resolved).
        pairs: (images/x, images2/x) files, sorted by name.
        positions: Pixel offsets (x0, y0) of each pair on the common grid.
        meta: The chip store's meta (sides, crs, chip size, ...).
        layout: The chip store's layout.
        n_blocks: Blocks of `per_block` chips.
        per_block: Chips per block (`block_chips`²).
    """

    folder: Path
    pairs: list[tuple[Path, Path]]
    positions: list[tuple[int, int]]
    meta: dict[str, Any]
    layout: chipstore.StoreLayout
    n_blocks: int
    per_block: int


def plan_export(folder: str | Path, tiling: TilingConfig) -> ExportPlan:
    """Check an Export Tiles folder (images/ + images2/) against `tiling`.

    Raises:
        InputError: missing folders, unpaired files, chips of another size or band layout.
    """
    folder = Path(folder).resolve()
    pairs = find_pairs(folder)
    size = tiling.chip_size
    positions, meta = _inspect(pairs, size)
    per_block = tiling.block_chips**2
    n_blocks = -(-len(pairs) // per_block)
    meta.update(scene=folder.name, chip_size=size, stride=size, block_chips=tiling.block_chips)
    meta.update(transform=None, width=None, height=None, pairs=len(pairs))
    layout = chipstore.StoreLayout(
        n_blocks * per_block,
        per_block,
        size,
        meta["source"]["count"],
        meta["target"]["count"],
        meta["source"]["dtype"],
        meta["target"]["dtype"],
    )
    return ExportPlan(folder, pairs, positions, meta, layout, n_blocks, per_block)


def import_into(out: Path, plan: ExportPlan, tiling: TilingConfig) -> dict[str, Any]:
    """Write the planned pairs into the chip store at `out`, resuming finished blocks.

    Returns:
        The summary, shaped like the tile stage's (n_chips, chips_kept, sides, chip size).
    """
    size = tiling.chip_size
    name = plan.folder.name
    chipstore.create_store(out, plan.layout, plan.meta)
    done = chipstore.done_blocks(out)
    for b in range(plan.n_blocks):
        if f"0_{b}" in done:
            continue
        lo, hi = b * plan.per_block, min((b + 1) * plan.per_block, len(plan.pairs))
        rows = [_row(i, plan.positions[i], size, name, b) for i in range(lo, hi)]
        _write_block(out, b, plan.pairs[lo:hi], rows, size)
    index = chipstore.write_index(out)
    return {
        "scene": name,
        "n_chips": len(index),
        "chips_kept": int((index["valid_fraction"] >= tiling.min_valid_fraction).sum()),
        **chipstore.sides_summary(plan.meta),
        "chip_size": size,
        "stride": size,
        "store": chipstore.STORE,
    }


def _row(i: int, pos: tuple[int, int], size: int, scene: str, block: int) -> dict[str, Any]:
    x0, y0 = pos
    return {
        "chip": i,
        "row": y0 // size,
        "col": x0 // size,
        "x0": x0,
        "y0": y0,
        "minx": 0.0,
        "miny": 0.0,
        "maxx": 0.0,
        "maxy": 0.0,  # set from the chip when read
        "valid_fraction": 0.0,
        "scene": scene,
        "block": f"0_{block}",
    }
