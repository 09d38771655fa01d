"""The chip store: paired chips in Zarr v3, written block by block and resumable.

Layout of a tile-stage folder::

    chips.zarr/source   (N, Cs, S, S) source dtype   one chip per chunk, one block per shard
    chips.zarr/target   (N, Ct, S, S) target dtype
    chips.zarr/valid    (N, S, S)     bool           source AND target valid
    blocks/{i}_{j}.done  JSON rows of the block's chips; written after its chips (resume unit)
    index.parquet        one row per chip (see `INDEX_COLUMNS`), gathered from the markers
    meta.json            band names, dtypes, nodata, source grid, chip size, stride

Chip slots are fixed in advance: block ``b`` owns slots ``[b * B², (b + 1) * B²)`` (``B`` =
`block_chips`), so a block always writes the same chips into the same shard and a resumed run
ends with a store identical to an uninterrupted one. Edge blocks leave unused slots, which cost
nothing (unwritten chunks are not stored) and never appear in the index.
"""

from __future__ import annotations

import json
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr
from zarr.codecs import BloscCodec
from zarr.core.array_spec import ArrayConfigParams

from p2p.core.errors import StageError
from p2p.core.fsutil import atomic_path, atomic_write_json, atomic_write_text, read_json

STORE = "chips.zarr"
INDEX = "index.parquet"
META = "meta.json"
BLOCKS = "blocks"
READY = ".ready"
# Chip codecs (`TilingConfig.compression`). Writing chips is the tile stage's main cost after
# decoding. Measured on 2048² x (3+1) uint16 blocks (benchmarks/tiling.py data), byte-shuffled
# LZ4 writes ~2x faster than byte-shuffled zstd-1 with ~90% of its ratio (1.65 vs 1.76 on noisy
# 16-bit imagery) and decodes fastest when training reads the chips; no compression saves a
# further ~15% of the tile stage's CPU time at 1.65x the bytes on disk.
CODECS: dict[str, BloscCodec | None] = {
    "lz4": BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
    "none": None,
}
# Store chunks even when they equal the fill value: checking every chunk for it costs a full
# scan of the block (~30% of a write) and only saves bytes for all-nodata chips, which LZ4
# shrinks to a few bytes anyway.
WRITE_CONFIG: ArrayConfigParams = {"write_empty_chunks": True}
INDEX_COLUMNS = (
    "chip",  # slot in the arrays
    "row",  # chip row in the scene's chip grid
    "col",
    "x0",  # pixel offset of the chip's upper-left corner on the source grid
    "y0",
    "minx",  # map bounds in the source CRS
    "miny",
    "maxx",
    "maxy",
    "valid_fraction",
    "scene",
    "block",
)


@dataclass(frozen=True)
class StoreLayout:
    """Shapes and dtypes of a chip store."""

    n_slots: int
    block_slots: int
    chip_size: int
    source_bands: int
    target_bands: int
    source_dtype: str
    target_dtype: str
    compression: str = "lz4"  # a key of `CODECS`


def _array_specs(layout: StoreLayout) -> dict[str, tuple[tuple[int, ...], str]]:
    s, n = layout.chip_size, layout.n_slots
    return {
        "source": ((n, layout.source_bands, s, s), layout.source_dtype),
        "target": ((n, layout.target_bands, s, s), layout.target_dtype),
        "valid": ((n, s, s), "bool"),
    }


def create_store(folder: Path, layout: StoreLayout, meta: dict[str, Any]) -> None:
    """Create the empty arrays and meta.json, unless a previous run already did.

    A folder without the ready marker (a run killed while creating arrays) is recreated.
    """
    if (folder / READY).exists():
        return
    shutil.rmtree(folder / STORE, ignore_errors=True)
    shutil.rmtree(folder / BLOCKS, ignore_errors=True)
    for name, (shape, dtype) in _array_specs(layout).items():
        chunk = (1, *shape[1:])
        zarr.create_array(
            str(folder / STORE / name),
            shape=shape,
            chunks=chunk,
            shards=(layout.block_slots, *shape[1:]),
            dtype=dtype,
            compressors=CODECS[layout.compression],
            fill_value=False if dtype == "bool" else 0,
            dimension_names=("chip", "band", "y", "x") if len(shape) == 4 else ("chip", "y", "x"),
        )
    (folder / BLOCKS).mkdir(exist_ok=True)
    atomic_write_json(folder / META, meta)
    atomic_write_text(folder / READY, "")


def open_arrays(folder: str | Path, mode: str = "r") -> dict[str, Any]:
    """The store's `source`, `target` and `valid` Zarr arrays."""
    root = Path(folder) / STORE
    arrays = {
        name: zarr.open_array(str(root / name), mode=mode)  # type: ignore[arg-type]
        for name in ("source", "target", "valid")
    }
    if mode == "r":
        return arrays
    return {name: array.with_config(WRITE_CONFIG) for name, array in arrays.items()}


_opened = threading.local()


def _writable_arrays(folder: Path) -> dict[str, Any]:
    """`open_arrays(folder, "r+")`, reused by the blocks a thread writes into one store.

    Opening parses three zarr.json files (~5 ms a block). The cache is per thread and keyed by
    the ready marker's inode and mtime, so a store removed and created again (possibly with
    another codec) is opened afresh.
    """
    ready = (folder / READY).stat()
    key = (str(folder), ready.st_ino, ready.st_mtime_ns)
    cached = getattr(_opened, "arrays", None)
    if cached is None or cached[0] != key:
        cached = (key, open_arrays(folder, mode="r+"))
        _opened.arrays = cached
    return cached[1]


def done_blocks(folder: Path) -> set[str]:
    """Ids of the blocks whose chips are completely written."""
    return {p.name.removesuffix(".done") for p in (folder / BLOCKS).glob("*.done")}


def write_block(
    folder: Path,
    block: str,
    slot0: int,
    chips: dict[str, np.ndarray],
    rows: list[dict[str, Any]],
) -> None:
    """Write one block's chips into its slots, then its done-marker (the commit point).

    Args:
        folder: Tile-stage folder.
        block: Block id, e.g. ``"3_4"``.
        slot0: First slot of the block.
        chips: ``source (n, Cs, S, S)``, ``target (n, Ct, S, S)``, ``valid (n, S, S)``.
        rows: One index row per chip, in slot order.
    """
    arrays = _writable_arrays(folder)
    n = len(rows)
    for name, array in arrays.items():
        array[slot0 : slot0 + n] = chips[name]
    atomic_write_json(folder / BLOCKS / f"{block}.done", rows)


def write_index(folder: Path) -> pd.DataFrame:
    """Gather the block markers into index.parquet (sorted by slot) and return it."""
    rows: list[dict[str, Any]] = []
    for marker in sorted((folder / BLOCKS).glob("*.done")):
        rows.extend(read_json(marker))
    frame = pd.DataFrame(rows, columns=list(INDEX_COLUMNS))
    frame = frame.sort_values("chip", kind="stable").reset_index(drop=True)
    with atomic_path(folder / INDEX, suffix=".parquet") as tmp:
        frame.to_parquet(tmp, index=False)
    return frame


def read_index(folder: str | Path) -> pd.DataFrame:
    """The chip index of a finished tile-stage folder."""
    path = Path(folder) / INDEX
    if not path.is_file():
        raise StageError(folder, "no index.parquet: not a finished tile-stage folder")
    return pd.read_parquet(path)


def read_meta(folder: str | Path) -> dict[str, Any]:
    """The store's meta.json (band names, dtypes, nodata, grid, chip size, stride)."""
    path = Path(folder) / META
    if not path.is_file():
        raise StageError(folder, "no meta.json: not a tile-stage folder")
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise StageError(path, "meta.json does not hold a mapping")
    return data


def sides_summary(meta: dict[str, Any]) -> dict[str, Any]:
    """Band names, dtypes and nodata of both sides, as stage summaries report them."""
    return {
        f"{side}_{key}": meta[side][field]
        for side in ("source", "target")
        for key, field in (("bands", "band_names"), ("dtype", "dtype"), ("nodata", "nodata"))
    }
