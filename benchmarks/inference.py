"""Benchmark: `predict_scene` end to end vs the bare model forward over the same windows.

Writes a tiny-U-Net bundle and a `--side`² uint16 scene, then prints, side by side in one run,
at overlap 0 and at `--overlap`:

- bare forward: the generator over the very windows the scene needs (read beforehand), in the
  same batches and on the same device path (AMP + channels_last on CUDA), no I/O;
- predict_scene: read, normalize, reflect-pad, forward, blend, cast and write a GeoTIFF;
- the I/O floor of the same scene (`io_floor`: GDAL reading it whole and writing a same-size
  1-band output with predict's codec, all cores);

as windows/s and scene megapixels/s (best of `--repeat` interleaved runs), the ratio
end-to-end / bare (the windows already include the overlap factor 1/(1 - 2·overlap/tile)²),
and end to end's throughput as a share of the slower of the bare forward and the floor, i.e.
max(bare s, floor s) / e2e s: issue 23's GPU goals are >= 0.5 without `--tta` and, with it,
e2e/bare <= 2 (the bare forward then runs the 8 symmetries too).

With `--floor-side`, the pipeline against the I/O floor: GDAL (through rasterio, all cores)
reading the source whole and writing a same-size output with the same codec, beside the
installed `p2p predict --no-tta --format gtiff` of the same scene end to end (process start-up
included) with a near-null model (ngf 1, num_downs 2), so the pipeline's own cost shows on any
machine, on each of `--runtimes` (torch; onnx: the model exported, run by onnxruntime, and
torch never imported); ratio end-to-end / floor (goal <= 2.0 on CPU). Beside them, the
near-null model alone over as many windows (random input, p2p's CPU path), and
end-to-end / (floor + model): what the pipeline costs beyond reading, writing and the model
it has to run; and the CPU
seconds (user + system, all threads) of the floor and of `p2p predict`, whose ratio a busy
machine moves far less than the wall times'.

Then the peak memory of
predicting scenes of 1x, 4x and 16x the area of `--rss-side`², as GeoTIFF and as COG, each in
its own subprocess that reads its own high-water mark (VmHWM; goal: flat within +10%), and
of `p2p predict` itself (run in such a subprocess through its console-script entry point).

    python benchmarks/inference.py          # the paper's U-Net, 256² tiles: minutes on 2 cores
    python benchmarks/inference.py --side 8192 --tile 512 --overlap 64 --batch 8   # on a GPU
    python benchmarks/inference.py --ngf 8 --skip-throughput --rss-side 768   # memory only
    python benchmarks/inference.py --skip-throughput --skip-rss --floor-side 12288  # the floor
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine

from p2p.bands.normalization import BandStats, normalize
from p2p.core.config import PredictConfig, SceneConfig
from p2p.core.threads import available_cores
from p2p.infer.backends import WindowModel
from p2p.infer.inference import predict_scene
from p2p.infer.runtime import open_translator
from p2p.infer.translator import Translator, pick_device
from p2p.infer.tta import DihedralMean
from p2p.infer.windows import AxisLayout, axis_layout
from p2p.model.bundle import BundleMeta, load_bundle, write_bundle
from p2p.model.meta import read_ref
from p2p.model.networks import UNetGenerator
from p2p.raster import Grid
from p2p.raster.geotiff import profile

BANDS = 3


def write_scene(path: Path, side: int, seed: int = 0) -> None:
    """A smooth-plus-noise uint16 scene, written in row blocks (bounded memory)."""
    rng = np.random.default_rng(seed)
    profile = {
        "driver": "GTiff", "width": side, "height": side, "count": BANDS, "dtype": "uint16",
        "crs": "EPSG:32633", "transform": Affine(10, 0, 500000, 0, -10, 1000000),
        "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
    }  # fmt: skip
    x = np.arange(side)
    with rasterio.open(path, "w", **profile) as dst:
        for r0 in range(0, side, 256):
            rows = np.arange(r0, min(r0 + 256, side))[:, None]
            base = 1000 + 400 * np.sin(x / 37.0) * np.cos(rows / 53.0)
            block = np.stack([base + 100 * b + rng.normal(0, 20, base.shape) for b in range(BANDS)])
            dst.write(block.astype(np.uint16), window=((r0, r0 + len(rows)), (0, side)))


def write_model(model_dir: Path, ngf: int, num_downs: int) -> None:
    torch.manual_seed(0)
    gen = UNetGenerator(BANDS, 1, num_downs=num_downs, ngf=ngf, norm="batch", dropout=0.0)
    stats = BandStats((1100.0,) * BANDS, (300.0,) * BANDS, (500.0,) * BANDS, (1800.0,) * BANDS)
    meta = BundleMeta(
        model={"num_downs": num_downs, "ngf": ngf, "norm": "batch", "dropout": 0.0},
        in_channels=BANDS, out_channels=1, source_bands=tuple(f"b{i}" for i in range(BANDS)),
        target_bands=("t",), source_stats=stats.to_dict(),
        target_stats=BandStats((1000.0,), (1.0,), (0.0,), (4000.0,)).to_dict(),
        target_dtype="uint16", target_nodata=None, source_nodata=None, chip_size=256,
    )  # fmt: skip
    write_bundle(model_dir, gen.eval(), meta)


def scene_windows(scene: Path, stats: BandStats, layout: AxisLayout) -> list[np.ndarray]:
    """The very windows `predict_scene` feeds the model: normalized, reflect-padded, one
    `(per_row, C, tile, tile)` array per row of windows (the benchmark scene fits in memory)."""
    with rasterio.open(scene) as ds:
        x = normalize(ds.read().astype(np.float32), stats, band_axis=0)
    pad = layout.count * layout.stride + layout.overlap - layout.size
    x = np.pad(x, ((0, 0), (layout.overlap, pad), (layout.overlap, pad)), mode="reflect")
    starts = [k * layout.stride for k in range(layout.count)]
    return [
        np.stack([x[:, r : r + layout.tile, c : c + layout.tile] for c in starts]) for r in starts
    ]


def bare_forward(model: WindowModel, rows: list[np.ndarray], batch: int) -> float:
    """Seconds to run the windows through the model in the batches `predict_scene` uses
    (each row of windows cut into batches of `batch`), with no I/O and no blending."""
    start = time.perf_counter()
    for row in rows:
        for b0 in range(0, len(row), batch):
            model(np.ascontiguousarray(row[b0 : b0 + batch]))
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def compare(model_dir: Path, scene: Path, side: int, args: argparse.Namespace) -> list[str]:
    bundle = load_bundle(model_dir)
    stats = BandStats.from_dict(bundle.meta.source_stats)
    multiple = 2**args.num_downs
    rows = []
    for overlap in (0, args.overlap):
        config = PredictConfig(
            tile_size=args.tile, overlap=overlap, batch_size=args.batch,
            output_format="gtiff", device=args.device, tta=args.tta,
        )  # fmt: skip
        layout = axis_layout(side, args.tile, overlap, multiple, "cosine")
        rows_of_windows = scene_windows(scene, stats, layout)
        windows = layout.count**2
        model: WindowModel = Translator(bundle.generator, pick_device(args.device))
        if args.tta:  # the same 8 forwards per window in both columns
            model = DihedralMean(model)
        bare_forward(model, rows_of_windows, args.batch)  # warm-up: every batch shape once
        bares, e2es, floors = [], [], []
        for _ in range(args.repeat):  # interleaved, best of each: robust to a busy machine
            bares.append(bare_forward(model, rows_of_windows, args.batch))
            start = time.perf_counter()
            predict_scene(bundle, SceneConfig(source=str(scene)), scene.with_name("p.tif"), config)
            e2es.append(time.perf_counter() - start)
            floors.append(io_floor(scene, scene.with_name("floor.tif"), "deflate"))
        bare, e2e, floor = min(bares), min(e2es), min(floors)
        mp = side * side / 1e6
        rows.append(
            f"| {overlap:>7} | {windows:>7} | {windows / bare:>9.1f} | {windows / e2e:>9.1f} "
            f"| {mp / bare:>9.2f} | {mp / e2e:>9.2f} | {mp / floor:>9.2f} | {e2e / bare:>9.2f} "
            f"| {max(bare, floor) / e2e:>9.2f} |"
        )
    return rows


def io_floor(scene: Path, out: Path, compress: str) -> float:
    """Seconds for GDAL, on every core, to read `scene` whole and write a same-size 1-band
    output (the model's) from it with `compress`, as p2p lays outputs out."""
    start = time.perf_counter()
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"), rasterio.open(scene) as src:
        data = src.read()
        opts = profile(Grid.of(src), 1, "uint16", 0, compress, available_cores())  # type: ignore[arg-type]
        with rasterio.open(out, "w", **opts) as dst:
            dst.write(data[:1])
    seconds = time.perf_counter() - start
    out.unlink()
    return seconds


def cli_predict(
    model_dir: Path, scene: Path, out: Path, args: argparse.Namespace, runtime: str = "torch"
) -> float:
    """Seconds for the installed `p2p predict --no-tta` of `scene` on `runtime`, start-up
    included."""
    p2p = Path(sys.executable).with_name("p2p")  # else (not installed, e.g. on a GPU box
    # reached with PYTHONPATH) the same entry point as a module: one import more at start-up
    entry = [str(p2p)] if p2p.exists() else [sys.executable, "-m", "p2p"]
    cmd = [*entry, "predict", "--model", str(model_dir), "--input", str(scene), "--output",
           str(out), "--workspace", str(out.parent / "ws"), "--format", "gtiff", "--no-tta",
           "--tile-size", str(args.tile), "--overlap", str(args.overlap), "--batch-size",
           str(args.batch), "--device", args.device, "--compress", args.compress,
           "--runtime", runtime]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    shutil.rmtree(out.parent / "ws")
    out.unlink()
    return seconds


def floor_runtimes(model_dir: Path, asked: list[str]) -> list[str]:
    """The runtimes of the floor rows: ``onnx`` only where it can be exported and run here
    (the null bundle gets its ``model.onnx``)."""
    if "onnx" not in asked:
        return asked
    if not all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnxscript")):
        print("(no onnxruntime or onnxscript here: the onnx floor row is skipped)")
        return [r for r in asked if r != "onnx"]
    from p2p.infer.onnxbundle import export_onnx

    export_onnx(model_dir)
    return asked


def floor_rows(folder: Path, args: argparse.Namespace) -> list[str]:
    """The I/O floor and `p2p predict` end to end (near-null model) on each runtime, best of
    `--repeat` interleaved runs, at `--floor-side`."""
    side = args.floor_side
    null = folder / "null"
    write_model(null, 1, 2)
    runtimes = floor_runtimes(null, args.runtimes)
    scene = folder / f"floor_{side}.tif"
    write_scene(scene, side, seed=3)
    floors, floor_cpu = [], []
    models: dict[str, list[float]] = {r: [] for r in runtimes}
    e2es: dict[str, list[float]] = {r: [] for r in runtimes}
    e2e_cpu: dict[str, list[float]] = {r: [] for r in runtimes}
    for _ in range(args.repeat):
        before = cpu_seconds(resource.RUSAGE_SELF)  # the floor runs in this process
        floors.append(io_floor(scene, folder / "floor_out.tif", args.compress))
        floor_cpu.append(cpu_seconds(resource.RUSAGE_SELF) - before)
        for runtime in runtimes:
            models[runtime].append(null_forward(null, side, args, runtime))
            before = cpu_seconds(resource.RUSAGE_CHILDREN)  # the one child ended since
            e2es[runtime].append(
                cli_predict(null, scene, folder / "e2e" / "out.tif", args, runtime)
            )
            e2e_cpu[runtime].append(cpu_seconds(resource.RUSAGE_CHILDREN) - before)
    floor, mp, rows = min(floors), side * side / 1e6, []
    for r in runtimes:
        model, e2e, cpu = min(models[r]), min(e2es[r]), min(e2e_cpu[r])
        rows.append(f"| {side}² | {r} | {args.compress} | {floor:.1f} | {model:.1f} | {e2e:.1f} "
                    f"| {mp / e2e:.1f} | {e2e / floor:.2f} | {e2e / (floor + model):.2f} "
                    f"| {min(floor_cpu):.1f} | {cpu:.1f} "
                    f"| {cpu / min(floor_cpu):.2f} |")  # fmt: skip
    return rows


def cpu_seconds(who: int) -> float:
    """User + system CPU seconds of this process (`resource.RUSAGE_SELF`, all its threads) or
    of its ended, waited-for children (`RUSAGE_CHILDREN`): on a busy machine the CPU a run
    costs moves far less than its wall time."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def null_forward(model_dir: Path, side: int, args: argparse.Namespace, runtime: str) -> float:
    """Seconds the near-null model alone takes over as many windows as a `side`² scene has
    (its batches on p2p's CPU path for `runtime`, all cores; the windows' content does not
    change the time), so the floor rows can say what the pipeline costs beyond reading,
    writing and the model."""
    layout = axis_layout(side, args.tile, args.overlap, 4, "cosine")
    config = PredictConfig(runtime=runtime, device=args.device, tta=False)
    model = open_translator(read_ref(model_dir), config)
    batch = np.random.default_rng(0).uniform(-1, 1, (args.batch, BANDS, args.tile, args.tile))
    batch = batch.astype(np.float32)
    start = time.perf_counter()
    for _ in range(0, layout.count**2, args.batch):
        model(batch)
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def rss_child(model_dir: str, scene: str, fmt: str, tile: int, overlap: int, batch: int,
              dev: str) -> None:  # fmt: skip
    out = Path(scene).with_name(f"rss_pred_{fmt}.tif")
    if fmt == "cli":  # what `p2p predict` runs: predict stage, mosaic stage, COG, delivery
        from p2p.app.cli import main as p2p

        sys.argv = ["p2p", "predict", "--model", model_dir, "--input", scene, "--output",
                    str(out), "--tile-size", str(tile), "--overlap", str(overlap),
                    "--batch-size", str(batch), "--device", dev, "--no-tta"]  # fmt: skip
        try:
            p2p()
        except SystemExit as exc:
            assert not exc.code, exc.code
    else:
        config = PredictConfig(tile_size=tile, overlap=overlap, batch_size=batch,
                               output_format=fmt, device=dev, tta=False)  # fmt: skip
        predict_scene(load_bundle(model_dir), SceneConfig(source=scene), out, config)
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across fork + exec, so a child's ru_maxrss
    # starts at the parent's peak (which holds a model and wrote the scenes).
    status = Path("/proc/self/status").read_text()
    hwm_kb = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
    print(json.dumps({"vmhwm_mb": hwm_kb / 1024}))


def peak_rss(model_dir: Path, folder: Path, args: argparse.Namespace) -> list[str]:
    rows, base = [], {}
    for factor in (1, 2, 4):
        side = args.rss_side * factor
        scene = folder / f"rss_{side}.tif"
        write_scene(scene, side, seed=1)
        row = f"| {factor**2:>3}x | {side:>6}² |"
        for fmt in ("gtiff", "cog", "cli"):
            if fmt not in args.rss_modes:
                row += "  |  |"
                continue
            cmd = [sys.executable, __file__, "--rss-child", str(model_dir), str(scene), fmt,
                   str(args.tile), str(args.overlap), str(args.batch), args.device]  # fmt: skip
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            mb = json.loads(done.stdout.strip().splitlines()[-1])["vmhwm_mb"]
            base.setdefault(fmt, mb)
            row += f" {mb:>8.0f} | {100 * (mb / base[fmt] - 1):>+6.1f}% |"
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=1024, help="Scene side for throughput.")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--num-downs", type=int, default=8)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--repeat", type=int, default=3, help="Timed runs (best is kept).")
    parser.add_argument("--rss-side", type=int, default=512, help="Side of the 1x RSS scene.")
    parser.add_argument("--tta", action="store_true", help="Throughput with 8 forwards a window.")
    parser.add_argument("--skip-throughput", action="store_true", help="Peak memory only.")
    parser.add_argument("--skip-rss", action="store_true", help="Throughput only.")
    parser.add_argument(
        "--floor-side",
        type=int,
        default=0,
        help="Scene side of the I/O-floor comparison (0: skip it).",
    )
    parser.add_argument("--compress", default="deflate", help="Codec of the floor rows.")
    parser.add_argument("--runtimes", nargs="+", default=["torch", "onnx"],
                        choices=["torch", "onnx"], help="Runtimes of the floor rows.")  # fmt: skip
    modes = ["gtiff", "cog", "cli"]
    parser.add_argument("--rss-modes", nargs="+", default=modes, choices=modes,
                        help="What the RSS rows measure (cli: p2p predict).")  # fmt: skip
    parser.add_argument("--rss-child", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        m, s, f, t, o, b, d = args.rss_child
        rss_child(m, s, f, int(t), int(o), int(b), d)
        return
    device = pick_device(args.device)
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"CPU ({torch.get_num_threads()} threads)")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_model(folder / "model", args.ngf, args.num_downs)
        if not args.skip_throughput:
            write_scene(folder / "scene.tif", args.side)
        print(
            f"device: {label}; U-Net ngf={args.ngf} num_downs={args.num_downs}; "
            f"scene {args.side}² x {BANDS} bands uint16; tile {args.tile}, batch {args.batch}"
        )
        if not args.skip_throughput:
            print(
                "\n| overlap | windows | bare win/s | e2e win/s | bare MP/s | e2e MP/s "
                "| floor MP/s | e2e/bare | e2e MP/s / min(bare, floor) |"
            )
            print("|---|---|---|---|---|---|---|---|---|")
            for row in compare(folder / "model", folder / "scene.tif", args.side, args):
                print(row)
        if args.floor_side:
            print(f"\nI/O floor (GDAL read + write, all {available_cores()} cores) vs `p2p "
                  f"predict --no-tta` end to end, near-null U-Net (ngf 1, num_downs 2), tile "
                  f"{args.tile}, overlap {args.overlap}, best of {args.repeat}; load average "
                  f"{os.getloadavg()[0]:.1f}:")  # fmt: skip
            print("| scene | runtime | codec | floor s | model alone s | p2p predict s | MP/s "
                  "| e2e / floor | e2e / (floor + model) | floor CPU s | p2p CPU s "
                  "| CPU e2e / floor |")  # fmt: skip
            print("|---|---|---|---|---|---|---|---|---|---|---|---|")
            for row in floor_rows(folder, args):
                print(row)
        if args.skip_rss:
            return
        print(f"\npeak memory (VmHWM) of predict_scene and of `p2p predict` (COG; the predict and "
              f"mosaic stages), overlap {args.overlap}, one process each:")  # fmt: skip
        print("| area | scene | GeoTIFF MB | vs 1x | COG MB | vs 1x | p2p predict MB | vs 1x |")
        print("|---|---|---|---|---|---|---|---|")
        for row in peak_rss(folder / "model", folder, args):
            print(row)


if __name__ == "__main__":
    main()
