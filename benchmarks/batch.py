"""Benchmark: many scenes through the `batch-predict` flow and `p2p predict`, and the mosaic.

Writes a near-null model bundle (ngf 1, num_downs 2: the pipeline's own cost shows on any
machine) and, for each N of `--sizes`, N adjacent `--side`² 3-band uint16 scenes on one grid
(EPSG:32633, a near-square grid of rows and columns, neighbours overlapping by `--overlap`
pixels), then times, in one run:

- flow: the `batch_predict` flow in a child process on a temporary Prefect server, its scenes
  predicted on a Dask LocalCluster of `--workers` worker processes (one thread each) given as
  `dask.address`; wall = the flow call (server and cluster start-up excluded, and the
  workers' first imports, torch among them: a deployment finds both running and its workers
  warm; the first flow process of the child is cold, as a deployment's flow run is);
- CLI: the installed `p2p predict --input S1 ... --input SN --json`, a subprocess (wall
  includes its start-up), run by the flow child right after each flow, so that the two
  runs' predictions are timed in the same minute (on a shared machine the load swings
  within minutes: a prediction took 0.2 s or 0.4 s apart from anything p2p did);
- mosaic: `p2p.stages.mosaic.run` alone over the N predictions the CLI made, in a fresh
  workspace in its own child process with `p2p predict`'s thread budget; its peak memory is
  that process's VmHWM (and, beside it, the VmHWM after the imports, before the mosaic);
- GDAL: `rasterio.merge.merge` of the same predictions onto the same grid (GDAL's windowed
  reads, `method="first"`), written as the same tiled DEFLATE GeoTIFF (p2p's codec options,
  256² tiles, GDAL encoding on as many threads as p2p's budget gave its mosaic), in its own
  child process with its VmHWM; the two mosaics run `--repeat` times interleaved, the fastest
  of each kept; with `--baseline DIR` (a checkout of another commit's `p2p/`, `tasks/` and
  `flows/`, e.g. `git archive main p2p tasks flows | tar -x -C /tmp/base`), that checkout's
  mosaic stage runs too, by this script's child, interleaved with the others, and its flow
  runs in a flow child of its own just before this checkout's: before and after, side by
  side in one run.

Per scene, orchestration overhead = (wall - sum of the predict stages' seconds - the mosaic
stage's seconds) / N, from the run record (`stages.*.seconds`); with one worker the
predictions run one after another, so this is exactly the issue's "wall minus the sum of the
predictions" (less the mosaic, which is work, not orchestration). With W > 1 workers the
predictions overlap and the figure turns negative: read wall / N then. Goals: overhead <= 0.5 s
per scene at N = 64, mosaic time and peak memory per scene flat from N = 4 to 64 (+10 %),
mosaic <= 1.5 x GDAL's. Nothing here asserts timing.

    python benchmarks/batch.py                          # N = 4, 16, 64 of 1024²: ~5 min, 2 cores
    python benchmarks/batch.py --sizes 4 16 --side 512      # quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import rasterio
from affine import Affine

sys.path.insert(0, str(Path(__file__).resolve().parent))
# `--root DIR` (a mosaic or flow child of `--baseline`): that checkout's code, not this one's
ROOT = sys.argv[sys.argv.index("--root") + 1] if "--root" in sys.argv else None
sys.path.insert(0, ROOT or str(Path(__file__).resolve().parents[1]))

P2P = shutil.which("p2p") or str(Path(sys.executable).with_name("p2p"))
PIXEL = 10.0  # metres, write_scene's
SETTINGS = {"tile_size": 256, "overlap": 32, "tta": False, "output_format": "gtiff"}


def vm_hwm_mb() -> float:
    """This process's own peak resident memory (VmHWM), MB: not ru_maxrss, which Linux keeps
    across fork + exec."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def layout(n: int) -> tuple[int, int]:
    """Rows and columns of a near-square grid of `n` scenes."""
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def write_scenes(folder: Path, n: int, side: int, overlap: int, bases: list[Path]) -> list[str]:
    """`n` scenes on one grid: copies of the `bases` (cycled) moved to their place."""
    folder.mkdir(parents=True, exist_ok=True)
    _, cols = layout(n)
    step = (side - overlap) * PIXEL
    paths = []
    for k in range(n):
        row, col = divmod(k, cols)
        path = folder / f"scene_{row:02d}_{col:02d}.tif"
        shutil.copyfile(bases[k % len(bases)], path)
        with rasterio.open(path, "r+") as ds:
            ds.transform = Affine(PIXEL, 0, 500000 + col * step, 0, -PIXEL, 1000000 - row * step)
        paths.append(str(path))
    return paths


def split(record: dict[str, Any], wall: float) -> dict[str, float]:
    """Wall, summed predict seconds, mosaic seconds and the overhead per scene of a run."""
    stages = record["stages"]
    n = len(record["scenes"])
    predicted = sum(s["seconds"] for k, s in stages.items() if k.startswith("predict:"))
    mosaic = stages["mosaic"]["seconds"]
    return {"wall": wall, "predict": predicted, "mosaic": mosaic,
            "overhead": (wall - predicted - mosaic) / n, "per_scene": wall / n}  # fmt: skip


def warm_worker() -> None:
    """What a worker imports in its first prediction (torch, the predict stage, the stage
    tasks): paid once by a deployment's long-lived workers, so paid before the timer here."""
    import p2p.infer.inference
    import p2p.model.bundle  # noqa: F401
    import tasks.stages  # noqa: F401


def flow_child(spec: str) -> None:
    """Run the flow once per batch of `spec` (JSON: model, workers, batches, folder, cli) on
    one server and one cluster; print each run's split as a JSON line. With `cli`, `p2p
    predict` of the same scenes runs right after each flow (same minute, same load: the
    predictions of the two are compared) and the line holds its split and predictions."""
    from distributed import Client, LocalCluster
    from prefect.testing.utilities import prefect_test_harness

    from flows.batch_predict import batch_predict
    from p2p.core.config import BatchPredictConfig, DaskConfig, PredictConfig

    job = json.loads(spec)
    cluster = LocalCluster(n_workers=job["workers"], threads_per_worker=1, dashboard_address=None)
    with prefect_test_harness(server_startup_timeout=120), cluster:
        with Client(cluster) as client:  # closed before the flows: theirs is the only one
            client.run(warm_worker)
        for batch in job["batches"]:
            config = BatchPredictConfig(
                workspace=batch["workspace"], model=job["model"], scenes=batch["scenes"],
                output=batch["output"], predict=PredictConfig(**SETTINGS),
                dask=DaskConfig(address=cluster.scheduler_address),
            )  # fmt: skip
            start = time.perf_counter()
            record = batch_predict(config)
            line = split(record, time.perf_counter() - start)
            if job["cli"]:
                scenes = batch["scenes"]
                line["cli"], line["predictions"] = run_cli(Path(job["folder"]), len(scenes), scenes)
            print(json.dumps(line), flush=True)


def run_flows(
    folder: Path, batches: dict[int, list[str]], workers: int, root: str | None = None
) -> dict[int, Any]:
    """The flow child over the batches (with `root`: that checkout's flow, its own
    workspaces, no CLI runs); each batch's split (and its CLI run's, `flow_child`)."""
    tag = "baseflow" if root else "flow"
    spec = {"model": str(folder / "model"), "workers": workers, "folder": str(folder),
            "cli": root is None, "batches": [
        {"workspace": str(folder / f"{tag}{n}"), "scenes": scenes,
         "output": str(folder / f"{tag}{n}" / "mosaic.tif")} for n, scenes in batches.items()
    ]}  # fmt: skip
    cmd = [sys.executable, __file__, "--flow-child", json.dumps(spec)]
    cmd += ["--root", root] if root else []
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    lines = [json.loads(x) for x in done.stdout.splitlines() if x.startswith('{"wall"')]
    return dict(zip(batches, lines, strict=True))


def run_cli(folder: Path, n: int, scenes: list[str]) -> tuple[dict[str, float], list[str]]:
    """`p2p predict` of the scenes into a fresh workspace: its split and its predictions."""
    ws = folder / f"cli{n}"
    cmd = [P2P, "predict", "--model", str(folder / "model"), "--output", str(ws / "mosaic.tif"),
           "--workspace", str(ws), "--json", "--tile-size", "256", "--overlap", "32",
           "--no-tta", "--format", "gtiff"]  # fmt: skip
    for scene in scenes:
        cmd += ["--input", scene]
    start = time.perf_counter()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    record = json.loads(done.stdout.strip().splitlines()[-1])
    predictions = [
        str(Path(record["stages"][f"predict:{Path(s).stem}"]["path"]) / Path(s).name)
        for s in scenes
    ]
    return split(record, wall), predictions


def mosaic_child(out: str, predictions: str) -> None:
    """The mosaic stage alone over the predictions (JSON list) into a fresh workspace `out`,
    with the thread budget `p2p predict` applies; prints seconds, VmHWM after the imports and
    at the end (MB)."""
    import numpy.ma  # noqa: F401  (rasterio's first write imports it; p2p predict's have)

    import p2p.infer.mosaic  # noqa: F401  (rasterio and GDAL loaded, as in p2p predict)
    from p2p.core.config import MosaicConfig
    from p2p.core.threads import use_threads
    from p2p.stages import mosaic

    threads = use_threads(None).gdal
    imported = vm_hwm_mb()
    start = time.perf_counter()
    mosaic.run(out, json.loads(predictions), MosaicConfig(), output_format="gtiff")
    print(json.dumps({"seconds": time.perf_counter() - start, "base": imported,
                      "hwm": vm_hwm_mb(), "threads": threads}))  # fmt: skip


def gdal_child(out: str, predictions: str, threads: str) -> None:
    """GDAL's mosaic of the predictions (rasterio.merge: windowed reads, `first` where they
    overlap) into a tiled GeoTIFF with p2p's codec options, encoded on `threads` threads;
    prints as `mosaic_child`."""
    from rasterio.merge import merge

    from p2p.raster.geotiff import BLOCK, codec_options

    imported = vm_hwm_mb()
    start = time.perf_counter()
    options = {"driver": "GTiff", "tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK,
               "num_threads": threads, **codec_options("deflate", "uint16")}  # fmt: skip
    merge(json.loads(predictions), dst_path=out, dst_kwds=options)
    print(json.dumps({"seconds": time.perf_counter() - start, "base": imported,
                      "hwm": vm_hwm_mb()}))  # fmt: skip


def child(
    kind: str, out: Path, predictions: list[str], *extra: str, root: str | None = None
) -> dict[str, float]:
    cmd = [sys.executable, __file__, f"--{kind}-child", str(out), json.dumps(predictions), *extra]
    cmd += ["--root", root] if root else []
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def best(runs: list[dict[str, float]]) -> dict[str, float]:
    """The fastest of `runs` (the least disturbed by other work), with the highest VmHWM."""
    return min(runs, key=lambda r: r["seconds"]) | {"hwm": max(r["hwm"] for r in runs)}


def mosaics(
    folder: Path, n: int, predictions: list[str], repeat: int, baseline: str | None
) -> dict[str, dict[str, float]]:
    """The p2p mosaic stage (`p2p`), GDAL's merge of the predictions (`gdal`) and, with a
    `baseline` checkout, its mosaic stage (`base`), `repeat` times interleaved; GDAL encodes
    on the threads p2p's budget gave its mosaic (same codec, same threads)."""
    runs: dict[str, list[dict[str, float]]] = {"p2p": [], "gdal": [], "base": []}
    for k in range(repeat):
        if baseline:
            runs["base"].append(
                child("mosaic", folder / f"base{n}_{k}", predictions, root=baseline)
            )
        runs["p2p"].append(child("mosaic", folder / f"mosaic{n}_{k}", predictions))
        threads = str(int(runs["p2p"][-1]["threads"]))
        runs["gdal"].append(child("gdal", folder / f"gdal{n}_{k}.tif", predictions, threads))
    return {name: best(r) for name, r in runs.items() if r}


def measure(folder: Path, sizes: list[int], args: argparse.Namespace) -> dict[int, Any]:
    from inference import write_scene  # torch: not in the children that measure memory

    bases = [folder / f"base{k}.tif" for k in range(4)]
    for k, base in enumerate(bases):
        write_scene(base, args.side, seed=k)
    batches = {n: write_scenes(folder / f"s{n}", n, args.side, args.overlap, bases) for n in sizes}
    base_flows = run_flows(folder, batches, args.workers, args.baseline) if args.baseline else {}
    flows = run_flows(folder, batches, args.workers)
    rows = {}
    for n in batches:
        cli, predictions = flows[n].pop("cli"), flows[n].pop("predictions")
        done = mosaics(folder, n, predictions, args.repeat, args.baseline)
        with rasterio.open(folder / f"gdal{n}_0.tif") as ds:
            pixels = ds.width * ds.height
        rows[n] = {"flow": flows[n], "cli": cli, "mosaic": done["p2p"], "gdal": done["gdal"],
                   "base": done.get("base"), "base_flow": base_flows.get(n), "px": pixels,
                   "load": os.getloadavg()[0]}  # fmt: skip
    return rows


def print_tables(rows: dict[int, Any], args: argparse.Namespace, load_before: float) -> None:
    print(
        f"{os.cpu_count()} CPUs, load average {load_before:.1f} before; {args.side}² x 3-band "
        f"uint16 scenes overlapping by {args.overlap} px, near-null U-Net (ngf 1, num_downs 2), "
        f"tile 256, overlap 32, no TTA, GeoTIFF DEFLATE; flow on a LocalCluster of "
        f"{args.workers} worker(s) x 1 thread"
    )
    print("\n| N | flow wall s | flow Σpredict s | flow mosaic s | flow overhead/scene s "
          "| flow wall/N s | CLI wall s | CLI Σpredict s | CLI mosaic s "
          "| CLI overhead/scene s | CLI wall/N s | load |")  # fmt: skip
    print("|---" * 12 + "|")
    for n, r in rows.items():
        f, c = r["flow"], r["cli"]
        print(f"| {n} | {f['wall']:.1f} | {f['predict']:.1f} | {f['mosaic']:.1f} "
              f"| {f['overhead']:.2f} | {f['per_scene']:.2f} | {c['wall']:.1f} "
              f"| {c['predict']:.1f} | {c['mosaic']:.1f} | {c['overhead']:.2f} "
              f"| {c['per_scene']:.2f} | {r['load']:.1f} |")  # fmt: skip
    print(
        f"\nmosaics: best of {args.repeat}, highest VmHWM; GDAL encodes on the threads p2p's "
        "budget chose (GDAL_NUM_THREADS)"
    )
    print("\n| N | mosaic MP | threads | p2p mosaic s | s/MP | VmHWM MB (after imports) "
          "| GDAL merge s | GDAL VmHWM MB (after imports) | p2p / GDAL |")  # fmt: skip
    print("|---" * 9 + "|")
    for n, r in rows.items():
        m, g, mp = r["mosaic"], r["gdal"], r["px"] / 1e6
        ratio = m["seconds"] / g["seconds"]
        print(f"| {n} | {mp:.1f} | {m['threads']:.0f} | {m['seconds']:.2f} "
              f"| {m['seconds'] / mp:.3f} "
              f"| {m['hwm']:.0f} ({m['base']:.0f}) | {g['seconds']:.2f} "
              f"| {g['hwm']:.0f} ({g['base']:.0f}) | {ratio:.2f} |")  # fmt: skip
    if any(r["base"] for r in rows.values()):
        print_baseline(rows, args.baseline)
        print_baseline_flow(rows)


def print_baseline(rows: dict[int, Any], baseline: str) -> None:
    """The baseline's mosaic beside this checkout's, each against GDAL's merge of the same run,
    and each one's VmHWM against its own at the first N."""
    print(f"\nbaseline {baseline} (its p2p, this script's mosaic child), same runs")
    print("\n| N | baseline s | baseline / GDAL | baseline VmHWM MB (vs first N) | p2p s "
          "| p2p / GDAL | p2p VmHWM MB (vs first N) | load |")  # fmt: skip
    print("|---" * 8 + "|")
    first = next(iter(rows.values()))
    for n, r in rows.items():
        b, m, g = r["base"], r["mosaic"], r["gdal"]
        grow_b = b["hwm"] / first["base"]["hwm"] - 1
        grow_m = m["hwm"] / first["mosaic"]["hwm"] - 1
        print(f"| {n} | {b['seconds']:.2f} | {b['seconds'] / g['seconds']:.2f} "
              f"| {b['hwm']:.0f} ({grow_b:+.0%}) | {m['seconds']:.2f} "
              f"| {m['seconds'] / g['seconds']:.2f} | {m['hwm']:.0f} ({grow_m:+.0%}) "
              f"| {r['load']:.1f} |")  # fmt: skip


def print_baseline_flow(rows: dict[int, Any]) -> None:
    """The baseline's flow (its flow, tasks and p2p in a flow child of its own, run just
    before this checkout's) beside this checkout's."""
    print("\nflows: the baseline's child first, then this checkout's, on the same scenes")
    print("\n| N | baseline wall s | baseline Σpredict s | baseline wall/N s | wall s "
          "| Σpredict s | wall/N s | CLI wall/N s |")  # fmt: skip
    print("|---" * 8 + "|")
    for n, r in rows.items():
        b, f, c = r["base_flow"], r["flow"], r["cli"]
        print(f"| {n} | {b['wall']:.1f} | {b['predict']:.1f} | {b['per_scene']:.2f} "
              f"| {f['wall']:.1f} | {f['predict']:.1f} | {f['per_scene']:.2f} "
              f"| {c['per_scene']:.2f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 16, 64], help="Batches.")
    parser.add_argument("--side", type=int, default=1024, help="Scene side, pixels.")
    parser.add_argument("--overlap", type=int, default=64, help="Neighbours' overlap, pixels.")
    parser.add_argument("--workers", type=int, default=1, help="LocalCluster workers.")
    parser.add_argument("--flow-child", help=argparse.SUPPRESS)
    parser.add_argument("--mosaic-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=3, help="Mosaic runs (best kept).")
    parser.add_argument("--gdal-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument(
        "--baseline", help="Checkout of another commit whose flow and mosaic run too."
    )
    args = parser.parse_args()
    if args.flow_child:
        return flow_child(args.flow_child)
    if args.mosaic_child:
        return mosaic_child(*args.mosaic_child)
    if args.gdal_child:
        return gdal_child(*args.gdal_child)
    load_before = os.getloadavg()[0]
    from inference import write_model

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_model(folder / "model", 1, 2)
        rows = measure(folder, args.sizes, args)
    print_tables(rows, args, load_before)


if __name__ == "__main__":
    main()
