"""Benchmark: the output codecs of `predict.compress` on real-looking data, size and speed.

Writes a smooth-plus-noise 3-band uint16 scene (what benchmarks/inference.py predicts from;
the noise is what makes real imagery hard to compress), a 1-band uint16 one, the mean of its bands
(noise / √3: a prediction is smoother than its source) and a float32 one, then, for each codec
p2p offers, writes it as p2p writes predictions (`geotiff.create`: 256² tiles, pixel
interleaved, the codec's predictor; then `geotiff.write_rows` per block row, in update mode,
where GDAL encodes at its default level: deflate 6, zstd 9), with GDAL's encoder on 1 thread
and on all the cores this process may use, and reads it back whole. Prints MB, write and
read seconds (best of `--repeat`), side by side in one run.

    python benchmarks/compress.py                  # 4096²
    python benchmarks/compress.py --side 2048 --repeat 1
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference import write_scene

from p2p.core.threads import available_cores
from p2p.raster import Grid
from p2p.raster.geotiff import BLOCK, COMPRESSIONS, create, write_rows


def write_with(data: np.ndarray, grid: Grid, path: Path, codec: str, threads: int) -> float:
    """Seconds to write `data` `(C, H, W)` as p2p writes a prediction: `geotiff.create`, then
    `geotiff.write_rows` per block row (reopened in update mode, flushed and checked), with
    GDAL's encoder on `threads`."""
    path.unlink(missing_ok=True)
    os.environ["GDAL_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    create(path, grid, data.shape[0], str(data.dtype), 0, {}, compress=codec)  # type: ignore[arg-type]
    for r0 in range(0, data.shape[1], BLOCK):
        write_rows(path, data[:, r0 : r0 + BLOCK], r0)
    return time.perf_counter() - start


def read_back(path: Path, threads: int) -> float:
    start = time.perf_counter()
    with rasterio.Env(GDAL_NUM_THREADS=str(threads)), rasterio.open(path) as ds:
        ds.read()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    cores = available_cores()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_scene(folder / "src.tif", args.side)
        with rasterio.open(folder / "src.tif") as ds:
            ints, grid = ds.read(), Grid.of(ds)
        smooth = ints.astype(np.float32).mean(axis=0, keepdims=True)
        scenes = {
            "uint16 x3": ints,
            "uint16 x1 smoother": smooth.astype(np.uint16),
            "float32 x3": (ints.astype(np.float32) - 1000.0) / 300.0,
        }
        print(
            f"{args.side}² x {ints.shape[0]} bands, smooth + noise; {cores} cores; load "
            f"{os.getloadavg()[0]:.1f}; best of {args.repeat}\n"
        )
        print("| data | codec | MB | write 1 thread s | write all cores s | read all cores s |")
        print("|---|---|---|---|---|---|")
        for name, data in scenes.items():
            for codec in COMPRESSIONS:
                path = folder / "out.tif"
                one = min(write_with(data, grid, path, codec, 1) for _ in range(args.repeat))
                every = min(write_with(data, grid, path, codec, cores) for _ in range(args.repeat))
                read = min(read_back(path, cores) for _ in range(args.repeat))
                mb = path.stat().st_size / 1e6
                print(f"| {name} | {codec} | {mb:.1f} | {one:.2f} | {every:.2f} | {read:.2f} |")


if __name__ == "__main__":
    main()
