"""Benchmark: onnxruntime against torch on the same windows, bare and through `predict_scene`.

Writes a U-Net bundle, exports it with `export_onnx` (what `p2p export` runs), writes a
`--side`² uint16 scene, then prints side by side in one run, for each runtime:

- bare: the runtime over the very windows the scene needs (read beforehand), in the batches
  `predict_scene` uses, no I/O;
- e2e: `predict_scene` with ``PredictConfig.runtime`` set to it (read, normalize, forward, blend,
  cast, write a GeoTIFF);

as windows/s (best of `--repeat` interleaved runs) and the ratio onnx/torch, plus the largest
difference between the two runtimes' outputs in normalized units.

    python benchmarks/onnx_runtime.py                       # the paper's U-Net, 256² tiles, CPU
    python benchmarks/onnx_runtime.py --device cuda         # onnxruntime-gpu's CUDA provider
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# the scene, model and window recipes of the inference benchmark (this folder is on sys.path)
from inference import scene_windows, write_model, write_scene

from p2p.bands.normalization import BandStats
from p2p.core.config import PredictConfig, SceneConfig
from p2p.infer.backends import WindowModel
from p2p.infer.inference import predict_scene
from p2p.infer.onnxbundle import export_onnx
from p2p.infer.runtime import open_translator
from p2p.infer.windows import axis_layout
from p2p.model.bundle import load_bundle

RUNTIMES = ("torch", "onnx")


def bare_forward(model: WindowModel, rows: list[np.ndarray], batch: int) -> float:
    """Seconds to run every window through `model` in batches of `batch` (per window row)."""
    start = time.perf_counter()
    for row in rows:
        for b0 in range(0, len(row), batch):
            model(np.ascontiguousarray(row[b0 : b0 + batch]))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def largest_difference(models: dict[str, WindowModel], rows: list[np.ndarray]) -> float:
    """Max |onnx − torch| over the first window row, normalized units."""
    first = np.ascontiguousarray(rows[0])
    return float(np.abs(models["onnx"](first) - models["torch"](first)).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=1024, help="Scene side in pixels.")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--num-downs", type=int, default=8)
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--repeat", type=int, default=3, help="Timed runs (best is kept).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_model(folder / "model", args.ngf, args.num_downs)
        export_onnx(folder / "model")
        write_scene(folder / "scene.tif", args.side)
        bundle = load_bundle(folder / "model")
        layout = axis_layout(args.side, args.tile, args.overlap, 2**args.num_downs, "cosine")
        stats = BandStats.from_dict(bundle.meta.source_stats)
        rows = scene_windows(folder / "scene.tif", stats, layout)
        windows = layout.count**2
        configs = {
            r: PredictConfig(tile_size=args.tile, overlap=args.overlap, batch_size=args.batch,
                             output_format="gtiff", device=args.device, runtime=r,
                             tta=False)  # one forward per window, as the bare loop
            for r in RUNTIMES
        }  # fmt: skip
        models = {r: open_translator(bundle, configs[r]) for r in RUNTIMES}
        for r in RUNTIMES:
            bare_forward(models[r], rows, args.batch)  # warm-up: every batch shape once
        bare: dict[str, list[float]] = {r: [] for r in RUNTIMES}
        e2e: dict[str, list[float]] = {r: [] for r in RUNTIMES}
        scene = SceneConfig(source=str(folder / "scene.tif"))
        for _ in range(args.repeat):  # interleaved, best of each: robust to a busy machine
            for r in RUNTIMES:
                bare[r].append(bare_forward(models[r], rows, args.batch))
                start = time.perf_counter()
                predict_scene(bundle, scene, folder / f"{r}.tif", configs[r])
                e2e[r].append(time.perf_counter() - start)
        print(
            f"device: {args.device} ({torch.get_num_threads()} torch threads); U-Net "
            f"ngf={args.ngf} num_downs={args.num_downs}; scene {args.side}²; tile {args.tile}, "
            f"overlap {args.overlap}, batch {args.batch}; {windows} windows; best of {args.repeat}"
        )
        print("\n| runtime | bare win/s | e2e win/s | bare vs torch | e2e vs torch |")
        print("|---|---|---|---|---|")
        for r in RUNTIMES:
            b, e = min(bare[r]), min(e2e[r])
            vb, ve = min(bare["torch"]) / b, min(e2e["torch"]) / e
            print(f"| {r} | {windows / b:.2f} | {windows / e:.2f} | {vb:.2f}x | {ve:.2f}x |")
        diff = largest_difference(models, rows)
        print(f"\nmax |onnx - torch| on the first window row: {diff:.2e} (normalized units)")


if __name__ == "__main__":
    main()
