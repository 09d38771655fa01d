"""Benchmark: Dask tiling vs raw decode vs a naive per-chip rasterio loop, and peak RSS.

Generates a tiled, deflate-compressed uint16 GeoTIFF pair (source `--bands` bands, target 1
band) of `--size`² pixels and times, on the very same files:

- raw decode: every internal block of both files read once with rasterio, one thread (the
  issue's I/O limit); also with `--workers` threads, the decode ceiling of the machine;
- naive loop: one `rasterio` window read per chip of source and target, each chip pair written
  to Zarr v3 arrays of one chip per chunk with the chip store's codec;
- p2p tiling: `p2p.data.tiling.tile_stage` on the same local Dask cluster it starts by default
  (`--processes` for worker processes), writing the chip store (chips, valid masks, index).

Every timed run is a fresh subprocess, so no method profits from another's GDAL block cache;
each first does its work once on a small separate scene (imports, GDAL and Zarr set-up, Dask
start), untimed. The methods run interleaved for `--rounds` rounds and the best round counts,
which damps the noise of other processes on the machine. The files sit in the OS page cache
for all methods. Speeds are MB/s of decoded pixels (``size² x (bands + 1) x 2`` bytes). Then
the peak RSS of tiling scenes of 1x, 4x and 16x the area of `--rss-base`², with blocks of
4x4 chips so that even the 1x scene keeps every worker thread busy.

    python benchmarks/tiling.py                  # 8192² x 3+1 bands, ~2 minutes on 2 cores
    python benchmarks/tiling.py --size 16384     # the issue's large scene (~2.1 GB of pixels)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import rasterio
import zarr
from affine import Affine
from distributed import Client
from rasterio.windows import Window

from p2p.core.config import DaskConfig, SceneConfig, TilingConfig
from p2p.core.dask_client import dask_client
from p2p.data import chipstore
from p2p.stages.tile import run as tile_stage

BLOCK = 256
METHODS = ("raw", "raw_parallel", "naive", "p2p")
LABELS = {
    "raw": "raw decode, 1 thread",
    "raw_parallel": "raw decode, {w} threads",
    "naive": "naive per-chip loop",
    "p2p": "p2p tiling (Dask)",
}


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


def raw_decode(paths: list[Path], threads: int = 1) -> None:
    """Read every internal block of the files once, over `threads` threads (one handle each)."""

    def rows(path: Path, part: int) -> None:
        with rasterio.open(path) as ds:
            for n, (_, window) in enumerate(ds.block_windows(1)):
                if n % threads == part:
                    ds.read(window=window)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda a: rows(*a), [(p, k) for p in paths for k in range(threads)]))


def naive_loop(src: Path, tgt: Path, out: Path, args: argparse.Namespace) -> None:
    """One window read per chip of each file, each chip written to Zarr (one chip per chunk)."""
    chip = args.chip
    with rasterio.open(src) as s, rasterio.open(tgt) as t:
        n = (s.height // chip) * (s.width // chip)
        arrays = {
            name: zarr.create_array(
                str(out / name),
                shape=(n, c, chip, chip),
                chunks=(1, c, chip, chip),
                dtype="uint16",
                compressors=chipstore.CODECS[args.compression],
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


def run_one(
    method: str, src: Path, tgt: Path, out: Path, args: argparse.Namespace, client: Client | None
) -> float:
    """Seconds `method` takes on (src, tgt), writing under `out` (a fresh folder)."""
    start = time.perf_counter()
    if method == "p2p":
        scene = SceneConfig(source=[str(src)], target=[str(tgt)])
        record = tile_stage(
            out,
            scene,
            TilingConfig(chip_size=args.chip, compression=args.compression),
            DaskConfig(),
            client=client,
        )
        secs = time.perf_counter() - start
        meta = chipstore.read_meta(record.path)
        assert not meta["target"]["resampled"], "a target on the source grid must not be warped"
        return secs
    if method == "raw":
        raw_decode([src, tgt])
    elif method == "raw_parallel":
        raw_decode([src, tgt], args.workers)
    else:
        naive_loop(src, tgt, out, args)
    return time.perf_counter() - start


def child(args: argparse.Namespace) -> None:
    """One timed run in this fresh process, after an untimed run on the warm-up scene."""
    root, out = args.dir, args.dir / f"out_{args.one}"
    with contextlib.ExitStack() as stack:
        client = None
        if args.one == "p2p":
            # The same kind of local cluster tile_stage starts when given no client.
            workers = {"n_workers": args.workers, "threads_per_worker": 1} if args.processes else {
                "n_workers": 1, "threads_per_worker": args.workers}  # fmt: skip
            dask = DaskConfig.model_validate(workers)
            client = stack.enter_context(dask_client(dask, processes=args.processes))
        for name in ("warm", "big"):
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            cpu = time.process_time()  # all threads of this process (not worker processes)
            secs = run_one(
                args.one, root / f"{name}_s.tif", root / f"{name}_t.tif", out, args, client
            )
            cpu = time.process_time() - cpu
    shutil.rmtree(out, ignore_errors=True)
    print(secs, cpu)


def time_methods(args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """Best (wall, CPU) seconds of each method over interleaved rounds of fresh subprocesses."""
    best = dict.fromkeys(METHODS, (float("inf"), float("inf")))
    for _ in range(args.rounds):
        for method in METHODS:
            cmd = [sys.executable, __file__, "--one", method, *sys.argv[1:]]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            wall, cpu = map(float, out.stdout.strip().splitlines()[-1].split())
            best[method] = min(best[method], (wall, cpu))
    return best


def report(args: argparse.Namespace, best: dict[str, tuple[float, float]]) -> None:
    mb = args.size**2 * (args.bands + 1) * 2 / 1e6
    kind = f"{args.workers} worker processes" if args.processes else f"{args.workers} threads"
    print(
        f"\ndevice: CPU, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
        f"{args.size}² x {args.bands}+1 uint16 = {mb:.0f} MB of pixels; chip {args.chip}, "
        f"block 8x8 chips, {args.compression} chips; p2p on a local cluster of {kind}; best of "
        f"{args.rounds} rounds"
    )
    print(f"{'method':<26}{'seconds':>9}{'MB/s':>9}{'vs raw':>9}{'vs naive':>10}{'CPU s':>8}")
    for method in METHODS:
        secs, cpu = best[method]
        name = LABELS[method].format(w=args.workers)
        ratio, naive = best["raw"][0] / secs, best["naive"][0] / secs
        cpu_text = "n/a" if method == "p2p" and args.processes else f"{cpu:.2f}"
        print(f"{name:<26}{secs:>9.2f}{mb / secs:>9.1f}{ratio:>9.2f}{naive:>10.2f}{cpu_text:>8}")
    print(
        "CPU s: CPU time of all threads of the timed process in its best round; no method "
        f"can take less wall time than CPU s / {os.cpu_count()} cores."
    )


RSS_CHILD = """
import re, sys
from pathlib import Path
from p2p.core.config import DaskConfig, SceneConfig, TilingConfig
from p2p.stages.tile import run as tile_stage
if __name__ == "__main__":
    src, tgt, ws, chip, workers = sys.argv[1:6]
    dask = DaskConfig(n_workers=1, threads_per_worker=int(workers))
    tiling = TilingConfig(chip_size=int(chip), block_chips=4)
    tile_stage(ws, SceneConfig(source=[src], target=[tgt]), tiling, dask)
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across fork + exec, so it would report the
    # parent's RSS (large after generating the scene) instead of this process's own peak.
    status = Path("/proc/self/status").read_text()
    print(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))
"""


def peak_rss(args: argparse.Namespace) -> None:
    """Peak RSS of tile_stage's own (threaded) cluster for growing scenes, one process each."""
    root = args.dir
    script = root / "rss_child.py"
    script.write_text(RSS_CHILD)
    blocks = (args.rss_base // (4 * args.chip)) ** 2
    print(
        f"\npeak RSS of tiling ({args.workers} threads, blocks of 4x4 chips), scene side "
        f"{args.rss_base} ({blocks} blocks at 1x):"
    )
    base = None
    for factor in (1, 2, 4):
        side = args.rss_base * factor
        s, t = root / f"rss{side}_s.tif", root / f"rss{side}_t.tif"
        write_scene(s, side, args.bands, 2)
        write_scene(t, side, 1, 3)
        cmd = [sys.executable, str(script), str(s), str(t), str(root / f"ws_rss{side}")]
        out = subprocess.run(
            [*cmd, str(args.chip), str(args.workers)], check=True, capture_output=True, text=True
        )
        rss = int(out.stdout.strip().splitlines()[-1]) / 1024
        base = base or rss
        print(f"  {factor**2:>2}x area ({side}²): {rss:8.1f} MB  ({100 * (rss / base - 1):+.1f}%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", type=int, default=8192, help="scene side in pixels")
    parser.add_argument("--bands", type=int, default=3, help="source bands")
    parser.add_argument("--chip", type=int, default=256, help="chip side in pixels")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="Dask threads")
    parser.add_argument("--processes", action="store_true", help="Dask worker processes")
    parser.add_argument(
        "--compression", choices=sorted(chipstore.CODECS), default="lz4", help="chip codec"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (best counts)")
    parser.add_argument("--rss-base", type=int, default=2048, help="side of the 1x RSS scene")
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: temp)")
    parser.add_argument("--one", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        child(args)
        return
    args.dir = Path(args.dir or tempfile.mkdtemp(prefix="p2p-bench-"))
    args.dir.mkdir(parents=True, exist_ok=True)
    sys.argv += ["--dir", str(args.dir)]
    print(f"generating {args.size}² x {args.bands}+1 uint16 in {args.dir} ...", flush=True)
    warm = min(args.size, 3072)  # several blocks, so every worker thread warms up
    write_scene(args.dir / "warm_s.tif", warm, args.bands, 4)
    write_scene(args.dir / "warm_t.tif", warm, 1, 5)
    write_scene(args.dir / "big_s.tif", args.size, args.bands, 0)
    write_scene(args.dir / "big_t.tif", args.size, 1, 1)
    report(args, time_methods(args))
    peak_rss(args)


if __name__ == "__main__":
    main()
