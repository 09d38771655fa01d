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

import io
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr
from zarr.codecs import BloscCodec
from zarr.core.array_spec import ArrayConfigParams

from p2p.core import files, storage
from p2p.core.errors import StageError
from p2p.core.files import Location
from p2p.data.shards import ShardEncoder

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


def create_store(folder: Location, layout: StoreLayout, meta: dict[str, Any]) -> None:
    """Create the empty arrays and meta.json, unless a previous run already did.

    A folder without the ready marker (a run killed while creating arrays) is recreated.
    `folder` may be an ``s3://`` prefix: the arrays then go through zarr's object store.
    """
    if files.exists(files.join(folder, READY)):
        return
    files.remove_tree(files.join(folder, STORE))
    files.remove_tree(files.join(folder, BLOCKS))
    for name, (shape, dtype) in _array_specs(layout).items():
        chunk = (1, *shape[1:])
        zarr.create_array(
            files.zarr_store(files.join(folder, STORE, name)),
            shape=shape,
            chunks=chunk,
            shards=(layout.block_slots, *shape[1:]),
            dtype=dtype,
            compressors=CODECS[layout.compression],
            fill_value=False if dtype == "bool" else 0,
            dimension_names=("chip", "band", "y", "x") if len(shape) == 4 else ("chip", "y", "x"),
        )
    if not storage.is_remote(folder):
        Path(folder, BLOCKS).mkdir(exist_ok=True)
    files.write_json(files.join(folder, META), meta)
    files.write_bytes(files.join(folder, READY), uuid.uuid4().hex.encode())


def open_arrays(folder: Location, mode: str = "r") -> dict[str, Any]:
    """The store's `source`, `target` and `valid` Zarr arrays."""
    arrays = {
        name: zarr.open_array(
            files.zarr_store(files.join(folder, STORE, name), read_only=mode == "r"),
            mode=mode,  # type: ignore[arg-type]
        )
        for name in ("source", "target", "valid")
    }
    if mode == "r":
        return arrays
    return {name: array.with_config(WRITE_CONFIG) for name, array in arrays.items()}


_opened = threading.local()


def _writable_arrays(folder: Location) -> dict[str, tuple[Any, ShardEncoder | None]]:
    """`open_arrays(folder, "r+")` with each array's shard encoder, reused by the blocks a
    thread writes into one store.

    Opening parses three zarr.json files (~5 ms a block on a disk, three GETs on a bucket).
    The cache is per thread and keyed by the ready marker (its inode and mtime, or its random
    content on a bucket), so a store removed and created again (possibly with another codec)
    is opened afresh.
    """
    ready = files.join(folder, READY)
    if storage.is_remote(folder):
        stamp: Any = files.read_bytes(ready)
    else:
        stat = Path(ready).stat()
        stamp = (stat.st_ino, stat.st_mtime_ns)
    key = (str(folder), stamp)
    cached = getattr(_opened, "arrays", None)
    if cached is None or cached[0] != key:
        arrays = open_arrays(folder, mode="r+")
        cached = (key, {n: (a, ShardEncoder.for_array(a)) for n, a in arrays.items()})
        _opened.arrays = cached
    return cached[1]


def done_blocks(folder: Location) -> set[str]:
    """Ids of the blocks whose chips are completely written."""
    return {n.removesuffix(".done") for n in files.names(files.join(folder, BLOCKS), "*.done")}


def write_block(
    folder: Location,
    block: str,
    slot0: int,
    chips: Mapping[str, Sequence[np.ndarray] | np.ndarray],
    rows: list[dict[str, Any]],
) -> None:
    """Write one block's chips into its slots, then its done-marker (the commit point).

    A block that starts a shard is encoded as that shard in one pass (`p2p.data.shards`) and
    written as one file or object.

    Args:
        folder: Tile-stage folder (or ``s3://`` prefix).
        block: Block id, e.g. ``"3_4"``.
        slot0: First slot of the block.
        chips: Per array, the block's n chips in slot order (arrays or views, any strides):
            ``source (Cs, S, S)``, ``target (Ct, S, S)``, ``valid (S, S)``.
        rows: One index row per chip, in slot order.
    """
    for name, (array, encoder) in _writable_arrays(folder).items():
        if encoder is not None and slot0 % encoder.chips_per_shard == 0:
            shard = encoder.encode(chips[name])
            key = encoder.key(slot0 // encoder.chips_per_shard)
            files.write_bytes(files.join(folder, STORE, name, *key.split("/")), shard)
        else:  # a block that does not start a shard (never from tiling): through zarr
            array[slot0 : slot0 + len(rows)] = np.stack(list(chips[name]))
    files.write_json(files.join(folder, BLOCKS, f"{block}.done"), rows)


def write_index(folder: Location) -> pd.DataFrame:
    """Gather the block markers into index.parquet (sorted by slot) and return it."""
    rows: list[dict[str, Any]] = []
    blocks = files.join(folder, BLOCKS)
    for marker in files.names(blocks, "*.done"):
        rows.extend(files.read_json(files.join(blocks, marker)))
    frame = pd.DataFrame(rows, columns=list(INDEX_COLUMNS))
    frame = frame.sort_values("chip", kind="stable").reset_index(drop=True)
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    files.write_bytes(files.join(folder, INDEX), buffer.getvalue())
    return frame


def read_index(folder: Location) -> pd.DataFrame:
    """The chip index of a finished tile-stage folder."""
    data = files.read_bytes(files.join(folder, INDEX))
    if data is None:
        raise StageError(folder, "no index.parquet: not a finished tile-stage folder")
    return pd.read_parquet(io.BytesIO(data))


def read_meta(folder: Location) -> dict[str, Any]:
    """The store's meta.json (band names, dtypes, nodata, grid, chip size, stride)."""
    data = files.read_json(files.join(folder, META))
    if data is None:
        raise StageError(folder, "no meta.json: not a tile-stage folder")
    if not isinstance(data, dict):
        raise StageError(files.join(folder, META), "meta.json does not hold a mapping")
    return data


def sides_summary(meta: dict[str, Any]) -> dict[str, Any]:
    """Band names, dtypes and nodata of both sides, as stage summaries report them."""
    return {
        f"{side}_{key}": meta[side][field]
        for side in ("source", "target")
        for key, field in (("bands", "band_names"), ("dtype", "dtype"), ("nodata", "nodata"))
    }
