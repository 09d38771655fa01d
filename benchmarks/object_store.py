"""Benchmark: tiling and prediction from local disk vs from a local S3 server, side by side.

Writes a tiled, deflate-compressed uint16 scene pair (source `--bands` bands, target 1 band,
`--size`² pixels), uploads it to a bucket of moto's standalone S3 server on a loopback port,
and times on the very same files:

- tile: the tile stage (`p2p.stages.tile.run`, a threaded LocalCluster of `--workers`) from
  local paths, from ``s3://`` URLs with p2p's GDAL settings, and from ``s3://`` URLs with
  GDAL's defaults for the settings p2p sets (`p2p.core.storage.GDAL_DEFAULTS`: readdir on
  open, every extension probed, no range merging, no VSI cache);
- tile into a workspace in the bucket (``s3+workspace``): the same, with the chip store, block
  markers, index and manifest written to the bucket (PUT counts them);
- predict: `p2p.infer.inference.predict_scene` of the source with a small random U-Net
  (the model's cost is the same on both sides; what differs is reading).

Each timed run is a fresh subprocess (no GDAL cache carried over), after one untimed warm-up
of each kind; runs are interleaved for `--rounds` rounds and the best counts. Requests are
counted from the server's access log (GET = ranged reads; HEAD/LIST = metadata). Speeds are
MB/s of decoded pixels. The server is moto (Python), so absolute speeds say little about a
cloud bucket; the request counts carry over.

    python benchmarks/object_store.py              # 2048² x 3+1 bands
    python benchmarks/object_store.py --size 4096  # ~8 minutes on 2 busy cores

Measured here (4096², 2 threads, 2 rounds, a machine shared with other jobs): tiling from S3
0.42x local disk (13.5 vs 32.2 MB/s; 132 GETs, 4 HEADs for 134 MB of pixels), 163 GETs with
GDAL's defaults; prediction from S3 0.80x local (10 GETs, 1 HEAD). A later run (load 4-6)
with the workspace in the bucket too: tiling 0.27x local (16.3 vs 60.4 MB/s; reading from
S3 into a local workspace 0.34x), 186 GETs, 6 HEADs, 4 LISTs and 72 PUTs (48 shards of 16
blocks x 3 arrays, 16 block markers, metadata, index, manifest, lock).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.s3server import run_server  # noqa: E402

RUNS = (
    "tile:local",
    "tile:s3",
    "tile:s3-gdal-defaults",
    "tile:s3+workspace",
    "predict:local",
    "predict:s3",
)
#: GDAL's own defaults for what p2p sets (`storage.GDAL_DEFAULTS`); a set variable wins.
GDAL_PLAIN = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "FALSE",
    # GDAL's default probes every extension; an empty value would allow none, so list the
    # sidecars GDAL looks for
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.aux.xml,.ovr,.msk,.tfw,.tifw,.wld,.imd,.rpb,.xml",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "NO",
    "GDAL_HTTP_MULTIPLEX": "NO",
    "VSI_CACHE": "FALSE",
}


def write_scene(path: Path, size: int, bands: int, seed: int) -> None:
    """A smooth random uint16 COG-like GeoTIFF (256² tiles, deflate)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": bands, "dtype": "uint16",
        "crs": "EPSG:32633", "transform": Affine(10, 0, 500000, 0, -10, 1000000),
        "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
        "predictor": 2, "nodata": 0,
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        for b in range(bands):
            base = 1000 + 800 * np.sin(6 * xx + b) * np.cos(5 * yy - b)
            noise = rng.integers(0, 50, (size, size))
            dst.write((base + noise).astype(np.uint16), b + 1)


def child(kind: str, where: str, scratch: Path) -> None:
    """One timed run in this process; prints its seconds."""
    from p2p.core.config import DaskConfig, PredictConfig, SceneConfig, TilingConfig

    src, tgt = (f"{where}/src.tif", f"{where}/tgt.tif")
    start = time.perf_counter()
    if kind == "tile":
        from p2p.stages.tile import run as tile_stage

        scene = SceneConfig(source=[src], target=[tgt], nodata=0)
        workers = int(os.environ["BENCH_WORKERS"])
        dask = DaskConfig(n_workers=1, threads_per_worker=workers)
        workspace = os.environ.get("BENCH_WORKSPACE") or scratch / "ws"
        tile_stage(workspace, scene, TilingConfig(chip_size=256, block_chips=4), dask)
    else:
        from p2p.infer.inference import predict_scene
        from p2p.model.bundle import load_bundle

        config = PredictConfig(tile_size=512, overlap=32, batch_size=4, device="cpu")
        config = config.model_copy(update={"output_format": "gtiff"})
        bundle = load_bundle(os.environ["BENCH_MODEL"])
        predict_scene(bundle, SceneConfig(source=[src]), scratch / "out.tif", config)
    print(time.perf_counter() - start)


def write_model(folder: Path, bands: int) -> None:
    """A small random U-Net bundle for `bands` source bands."""
    import torch

    from p2p.bands.normalization import BandStats
    from p2p.model.bundle import BundleMeta, write_bundle
    from p2p.model.networks import UNetGenerator

    torch.manual_seed(0)
    stats = BandStats(mean=(1000.0,) * bands, std=(500.0,) * bands, low=(0.0,) * bands,
                      high=(3000.0,) * bands)  # fmt: skip
    target = BandStats((1000.0,), (500.0,), (0.0,), (3000.0,))
    meta = BundleMeta(
        model={"num_downs": 5, "ngf": 8, "norm": "batch", "dropout": 0.0},
        in_channels=bands, out_channels=1,
        source_bands=[f"b{i + 1}" for i in range(bands)], target_bands=["t"],
        source_stats=stats.to_dict(), target_stats=target.to_dict(),
        target_dtype="uint16", target_nodata=0, source_nodata=0, chip_size=256,
    )  # fmt: skip
    gen = UNetGenerator(bands, 1, num_downs=5, ngf=8, norm="batch", dropout=0.0)
    write_bundle(folder, gen.eval(), meta)


def counts(lines: list[str]) -> dict[str, int]:
    """Requests by kind in server log lines."""
    out = {"GET": 0, "HEAD": 0, "LIST": 0, "PUT": 0}
    for line in lines:
        method = re.search(r'"([A-Z]+) (\S+)', line)
        if method is None:
            continue
        if method.group(1) == "GET" and ("list-type" in line or "prefix=" in line):
            out["LIST"] += 1
        elif method.group(1) in out:
            out[method.group(1)] += 1
    return out


def timed(
    run: str, folder: Path, server: object, env: dict[str, str], bucket: str
) -> tuple[float, dict[str, int]]:
    """One run in a fresh subprocess: (seconds, requests it made)."""
    kind, side = run.split(":")
    where = str(folder) if side == "local" else f"s3://{bucket}"
    run_env = {**env, **(GDAL_PLAIN if side == "s3-gdal-defaults" else {})}
    if side == "s3+workspace":  # the chip store, markers and manifest in the bucket too
        run_env["BENCH_WORKSPACE"] = f"s3://{bucket}/ws-{uuid.uuid4().hex[:8]}"
    before = len(server.log_lines())  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        out = subprocess.run(
            [sys.executable, __file__, "--one", kind, where, scratch],
            env=run_env, capture_output=True, text=True,
        )  # fmt: skip
    if out.returncode:
        raise SystemExit(f"{run} failed:\n{out.stderr[-3000:]}")
    requests = counts(server.log_lines()[before:])  # type: ignore[attr-defined]
    return float(out.stdout.strip().splitlines()[-1]), requests


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="scene side in pixels")
    parser.add_argument("--bands", type=int, default=3, help="source bands")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="Dask threads")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (best counts)")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        child(args.one[0], args.one[1], Path(args.one[2]))
        return
    with tempfile.TemporaryDirectory(prefix="p2p-bench-s3-") as tmp:
        folder = Path(tmp)
        print(f"generating {args.size}² x {args.bands}+1 uint16 in {folder} ...", flush=True)
        write_scene(folder / "src.tif", args.size, args.bands, 0)
        write_scene(folder / "tgt.tif", args.size, 1, 1)
        write_model(folder / "model", args.bands)
        with run_server(folder / "moto.log") as server:
            bucket = "bench"
            server.client().create_bucket(Bucket=bucket)
            for name in ("src.tif", "tgt.tif"):
                server.put(folder / name, f"s3://{bucket}/{name}")
            env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
            env.update(server.env, BENCH_WORKERS=str(args.workers), OMP_NUM_THREADS="1",
                       BENCH_MODEL=str(folder / "model"), PYTHONPATH=str(ROOT))  # fmt: skip
            for run in RUNS:  # warm-up: imports, page cache, server
                timed(run, folder, server, env, bucket)
            best: dict[str, tuple[float, dict[str, int]]] = {}
            for _ in range(args.rounds):
                for run in RUNS:
                    secs, requests = timed(run, folder, server, env, bucket)
                    if run not in best or secs < best[run][0]:
                        best[run] = (secs, requests)
    report(args, best)


def report(args: argparse.Namespace, best: dict[str, tuple[float, dict[str, int]]]) -> None:
    mb = {
        "tile": args.size**2 * (args.bands + 1) * 2 / 1e6,
        "predict": args.size**2 * args.bands * 2 / 1e6,
    }
    print(f"\n{args.size}² x {args.bands}+1 bands uint16, {args.workers} Dask threads, "
          f"best of {args.rounds} rounds, CPU, moto S3 server on loopback")  # fmt: skip
    print(f"{'run':<26}{'seconds':>9}{'MB/s':>9}{'vs local':>10}{'GET':>7}{'HEAD':>6}{'LIST':>6}"
          f"{'PUT':>6}")  # fmt: skip
    for run in RUNS:
        kind = run.split(":")[0]
        secs, req = best[run]
        local = best[f"{kind}:local"][0]
        print(f"{run:<26}{secs:>9.2f}{mb[kind] / secs:>9.1f}{local / secs:>10.2f}"
              f"{req['GET']:>7}{req['HEAD']:>6}{req['LIST']:>6}{req['PUT']:>6}")  # fmt: skip


if __name__ == "__main__":
    main()
