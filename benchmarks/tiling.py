"""Benchmark: Dask tiling vs raw decode vs a naive per-chip rasterio loop, and peak RSS.

Generates a tiled, deflate-compressed uint16 GeoTIFF pair (source `--bands` bands, target 1
band) of `--size`² pixels and prints, side by side in one run:

- raw decode: every internal block of both files read once with rasterio (the I/O limit);
- naive loop: one `rasterio` window read per chip of each file, each chip written to Zarr;
- p2p tiling: `p2p.tiling.tile_stage` on a LocalCluster (`--workers` processes);

as MB/s of uncompressed pixels and ratios, then the peak RSS of tiling scenes of 1x, 4x and
16x the area of `--rss-base`² (each in its own subprocess, threads only, so one process holds
all the memory).

    python benchmarks/tiling.py                  # 4096² x 3 bands, a few minutes on 2 cores
    python benchmarks/tiling.py --size 16384     # the issue's large scene (~1.6 GB of pixels)
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import zarr
from affine import Affine
from distributed import Client, LocalCluster
from rasterio.windows import Window

from p2p.config import DaskConfig, SceneConfig, TilingConfig
from p2p.tiling import tile_stage

BLOCK = 256


def write_scene(path: Path, size: int, bands: int, seed: int) -> None:
    """A smooth-plus-noise uint16 scene, written block row by block row (bounded memory)."""
    rng = np.random.default_rng(seed)
    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": bands, "dtype": "uint16",
        "crs": "EPSG:32633", "transform": Affine(10, 0, 500000, 0, -10, 1000000),
        "tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK, "compress": "deflate",
    }  # fmt: skip
    x = np.arange(size)
    with rasterio.open(path, "w", **profile) as dst:
        for y0 in range(0, size, BLOCK):
            h = min(BLOCK, size - y0)
            yy = np.arange(y0, y0 + h)[:, None]
            base = 2000 + 800 * np.sin(yy / 97.0) * np.cos(x[None, :] / 131.0)
            for b in range(bands):
                noise = rng.normal(0, 30, (h, size))
                dst.write(
                    (base * (1 + 0.2 * b) + noise).astype(np.uint16),
                    b + 1,
                    window=Window(0, y0, size, h),
                )


def raw_decode(paths: list[Path]) -> float:
    """Seconds to read every internal block of the files once."""
    start = time.perf_counter()
    for p in paths:
        with rasterio.open(p) as ds:
            for _, window in ds.block_windows(1):
                ds.read(window=window)
    return time.perf_counter() - start


def naive_loop(src: Path, tgt: Path, chip: int, out: Path) -> float:
    """Seconds for a per-chip window loop writing each chip pair to Zarr."""
    start = time.perf_counter()
    with rasterio.open(src) as s, rasterio.open(tgt) as t:
        n = (s.height // chip) * (s.width // chip)
        arrays = {
            name: zarr.create_array(
                str(out / name), shape=(n, c, chip, chip), chunks=(1, c, chip, chip), dtype="uint16"
            )
            for name, c in (("source", s.count), ("target", t.count))
        }
        k = 0
        for r in range(s.height // chip):
            for c in range(s.width // chip):
                w = Window(c * chip, r * chip, chip, chip)
                arrays["source"][k] = s.read(window=w)
                arrays["target"][k] = t.read(window=w)
                k += 1
    return time.perf_counter() - start


def p2p_tiling(src: Path, tgt: Path, chip: int, ws: Path, client: Client) -> float:
    scene = SceneConfig(source=[str(src)], target=[str(tgt)])
    tiling = TilingConfig(chip_size=chip, stride=chip, block_chips=4)
    start = time.perf_counter()
    tile_stage(ws, scene, tiling, DaskConfig(), client=client)
    return time.perf_counter() - start


RSS_CHILD = """
import resource, sys
from distributed import Client, LocalCluster
from p2p.config import DaskConfig, SceneConfig, TilingConfig
from p2p.tiling import tile_stage
if __name__ == "__main__":
    src, tgt, ws, chip, workers = sys.argv[1:6]
    tiling = TilingConfig(chip_size=int(chip), stride=int(chip), block_chips=4)
    cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=False)
    with cluster, Client(cluster) as cl:
        scene = SceneConfig(source=[src], target=[tgt])
        tile_stage(ws, scene, tiling, DaskConfig(), client=cl)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_mb(src: Path, tgt: Path, ws: Path, chip: int, workers: int) -> float:
    script = ws.parent / "rss_child.py"
    script.write_text(RSS_CHILD)
    out = subprocess.run(
        [sys.executable, str(script), str(src), str(tgt), str(ws), str(chip), str(workers)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="scene side in pixels")
    parser.add_argument("--bands", type=int, default=3, help="source bands")
    parser.add_argument("--chip", type=int, default=256, help="chip side in pixels")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="Dask workers")
    parser.add_argument("--rss-base", type=int, default=1024, help="side of the 1x RSS scene")
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: temp)")
    args = parser.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="p2p-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    src, tgt = root / "src.tif", root / "tgt.tif"
    print(f"generating {args.size}² x {args.bands}+1 uint16 in {root} ...", flush=True)
    write_scene(src, args.size, args.bands, 0)
    write_scene(tgt, args.size, 1, 1)
    mb = args.size**2 * (args.bands + 1) * 2 / 1e6
    raw = raw_decode([src, tgt])
    naive = naive_loop(src, tgt, args.chip, root / "naive.zarr")
    cluster_start = time.perf_counter()
    with (
        LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=None) as c,
        Client(c) as client,
    ):
        client.run(importlib.import_module, "p2p.tiling")  # workers import once, before timing
        startup = time.perf_counter() - cluster_start
        ours = p2p_tiling(src, tgt, args.chip, root / "ws", client)
    print(
        f"\ndevice: CPU, {os.cpu_count()} cores; {mb:.0f} MB of pixels; chip {args.chip}; "
        f"{args.workers} Dask worker processes (start + imports {startup:.1f} s, not counted)"
    )
    print(f"{'method':<28}{'seconds':>9}{'MB/s':>9}{'vs raw':>9}{'vs naive':>10}")
    for name, secs in (
        ("raw decode (rasterio)", raw),
        ("naive per-chip loop", naive),
        ("p2p tiling (Dask)", ours),
    ):
        print(f"{name:<28}{secs:>9.2f}{mb / secs:>9.1f}{raw / secs:>9.2f}{naive / secs:>10.2f}")
    print(f"\npeak RSS of tiling (threads, {args.workers} workers), scene side {args.rss_base}:")
    base = None
    for factor in (1, 2, 4):
        side = args.rss_base * factor
        s, t = root / f"rss{side}_s.tif", root / f"rss{side}_t.tif"
        write_scene(s, side, args.bands, 2)
        write_scene(t, side, 1, 3)
        rss = peak_rss_mb(s, t, root / f"ws_rss{side}", args.chip, args.workers)
        base = base or rss
        change = 100 * (rss / base - 1)
        print(f"  {factor**2:>2}x area ({side}²): {rss:8.1f} MB  ({change:+.1f}% vs 1x)")


if __name__ == "__main__":
    main()
