"""Benchmark: chip store layouts (one shard per block vs one chunk per chip) per store.

The chip store keeps one chip per chunk, so training reads any chip on its own. Two layouts
hold those chunks: one Zarr v3 shard per block of chips (the chunks concatenated, an index at
the end: one object per block) or one object per chip. Both are written the way the tile
stage writes (each chip Blosc-LZ4 encoded from its view, `p2p.data.shards`; one atomic file or
one PUT per object, `p2p.core.files.write_bytes`), so only the object count differs, on a
local disk and on a bucket of moto's standalone S3 server (loopback). The baseline row is
zarr's own chunk-per-chip store written by zarr (``array[block] = chips``), without p2p's
atomic, flushed files. Measured side by side in one run:

- objects written, and write throughput (MB/s of raw chip bytes, one thread);
- random chip reads as training does them (`ChipDataset`: ``array[i]`` through zarr, a
  LocalStore or obstore's ObjectStore), mean milliseconds per chip.

    python benchmarks/chip_layout.py                   # 4 blocks of 64 chips of 4 x 256² uint16
    python benchmarks/chip_layout.py --blocks 8 --reads 200

Measured here (`--rounds 3 --reads 200`, 2 cores at load 8.5, shared): local disk, shards
344 MB/s vs chunks 72 MB/s (each chunk is its own atomic, flushed file), a chip read 1.72 vs
1.78 ms; moto S3, shards 139 vs 54 MB/s, a chip read 14.6 vs 3.3 ms (two ranged GETs, the
shard index then the chunk, against one; moto also serves a range from the whole object in
Python, a real bucket answers by latency). So the tile stage writes one shard per block on
both stores: 64x fewer objects and faster writes everywhere, the same reads on a disk; on a
bucket a random chip costs two requests instead of one.

Beside zarr's own chunk-per-chip store (`--blocks 2 --reads 100 --rounds 2`, load 12.8):
shards write 1.34x as fast on a disk and 0.81x on moto's S3 (zarr neither flushes nor renames
and PUTs concurrently), and read a chip in about 3x the time; their gain over that baseline is
64x fewer objects and one atomic, flushed write per block, not speed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numcodecs import Blosc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from p2p.core import files  # noqa: E402
from p2p.data.chipstore import CODECS  # noqa: E402
from p2p.data.shards import ShardEncoder  # noqa: E402
from tests.s3server import run_server  # noqa: E402

#: p2p's shards, p2p's own writer of one object per chip (atomic, flushed files), and zarr's
#: own chunk-per-chip store written by zarr itself (``array[block] = chips``: its store's
#: writes, no fsync, concurrent PUTs on a bucket): the baseline a reader would pick.
LAYOUTS = ("shard per block", "chunk per chip", "zarr chunk per chip")


def chips(n: int, bands: int, size: int, seed: int) -> np.ndarray:
    """Smooth-plus-noise uint16 chips ``(n, bands, size, size)``, like a noisy scene."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = 2000 + 800 * np.sin(yy / 37.0) * np.cos(xx / 53.0)
    return (base + rng.normal(0, 30, (n, bands, size, size))).astype(np.uint16)


def create(where: str, layout: str, shape: tuple[int, ...], block: int) -> Any:
    """An empty array of `layout` at `where`."""
    shards = (block, *shape[1:]) if layout == LAYOUTS[0] else None  # else a chunk per chip
    return zarr.create_array(
        files.zarr_store(where),
        shape=shape,
        chunks=(1, *shape[1:]),
        shards=shards,
        dtype="uint16",
        compressors=CODECS["lz4"],
        fill_value=0,
    )


def write(where: str, array: Any, layout: str, data: np.ndarray, block: int) -> int:
    """Write `data` block by block as `layout` does; return the objects written."""
    written = 0
    if layout == LAYOUTS[0]:
        encoder = ShardEncoder.for_array(array)
        assert encoder is not None
        for b in range(len(data) // block):
            shard = encoder.encode(list(data[b * block : (b + 1) * block]))
            files.write_bytes(files.join(where, *encoder.key(b).split("/")), shard)
            written += 1
        return written
    if layout == LAYOUTS[2]:
        for b in range(len(data) // block):
            array[b * block : (b + 1) * block] = data[b * block : (b + 1) * block]
        return len(data)
    codec = array.metadata.codecs[-1]  # the array's Blosc codec (typesize from its dtype)
    blosc = Blosc(
        cname=codec.cname.value,
        clevel=codec.clevel,
        shuffle=Blosc.SHUFFLE,
        blocksize=codec.blocksize,
        typesize=codec.typesize,
    )
    for i, chip in enumerate(data):
        encoded = blosc.encode(np.ascontiguousarray(chip).view(np.uint8))
        files.write_bytes(files.join(where, "c", str(i), "0", "0", "0"), encoded)
        written += 1
    return written


def measure(where: str, layout: str, data: np.ndarray, block: int, reads: int) -> dict[str, Any]:
    """Write then randomly read one layout at `where`."""
    array = create(where, layout, data.shape, block)
    start = time.perf_counter()
    objects = write(where, array, layout, data, block)
    write_s = time.perf_counter() - start
    reader = zarr.open_array(files.zarr_store(where, read_only=True), mode="r")
    picks = np.random.default_rng(0).integers(0, len(data), reads)
    np.testing.assert_array_equal(reader[int(picks[0])], data[picks[0]])  # it reads back
    start = time.perf_counter()
    for i in picks:
        reader[int(i)]
    read_ms = (time.perf_counter() - start) / reads * 1000
    return {"objects": objects, "mb_s": data.nbytes / 1e6 / write_s, "read_ms": read_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--blocks", type=int, default=4, help="blocks of 64 chips")
    parser.add_argument("--bands", type=int, default=4, help="bands per chip")
    parser.add_argument("--chip", type=int, default=256, help="chip side in pixels")
    parser.add_argument("--reads", type=int, default=100, help="random chip reads")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (best counts)")
    args = parser.parse_args()
    block = 64
    data = chips(args.blocks * block, args.bands, args.chip, 0)
    scratch = Path(tempfile.mkdtemp(prefix="p2p-layout-"))
    best: dict[tuple[str, str], dict[str, Any]] = {}
    with run_server(scratch / "moto.log") as server:
        os.environ.update(server.env)
        server.client().create_bucket(Bucket="layouts")
        for r in range(args.rounds):
            for store in ("local disk", "S3 (moto)"):
                for n, layout in enumerate(LAYOUTS):
                    prefix = f"r{r}l{n}"
                    local = store == "local disk"
                    where = str(scratch / prefix) if local else f"s3://layouts/{prefix}"
                    got = measure(where, layout, data, block, args.reads)
                    old = best.setdefault((store, layout), got)
                    old["mb_s"] = max(old["mb_s"], got["mb_s"])
                    old["read_ms"] = min(old["read_ms"], got["read_ms"])
                    if local:
                        shutil.rmtree(where, ignore_errors=True)
    load = os.getloadavg()[0]
    print(
        f"\n{args.blocks} blocks x {block} chips of {args.bands} x {args.chip}² uint16 "
        f"({data.nbytes / 1e6:.0f} MB), LZ4; 1 thread; {args.reads} random chip reads; best of "
        f"{args.rounds}; load average {load:.1f} on {os.cpu_count()} cores"
    )
    print(f"{'store':11s} {'layout':16s} {'objects':>8s} {'write MB/s':>11s} {'read ms/chip':>13s}")
    for (store, layout), got in best.items():
        print(
            f"{store:11s} {layout:16s} {got['objects']:8d} {got['mb_s']:11.0f} "
            f"{got['read_ms']:13.2f}"
        )
    for store in ("local disk", "S3 (moto)"):
        shard = best[(store, LAYOUTS[0])]
        for other in LAYOUTS[1:]:
            chunk = best[(store, other)]
            print(
                f"{store}: shards write at {shard['mb_s'] / chunk['mb_s']:.2f}x the speed of "
                f"{other} ({chunk['objects'] // shard['objects']}x fewer objects); a chip "
                f"reads in {shard['read_ms'] / chunk['read_ms']:.2f}x the time"
            )
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
