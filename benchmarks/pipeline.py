"""Benchmark: the prediction engine sequential vs threaded (and its tensor path), side by side.

The same `predict_scene` of one scene, in one process, interleaved run by run (best of
`--repeat`), with `p2p.infer.strips.PIPELINE_DEPTH = 0` (everything on one thread, the
reference), with the default depth (reader and writer threads), and with the loop's arrays as
torch tensors (the CUDA code; on the CPU here unless `--device cuda`). Prints seconds and the
ratio to the sequential run, and whether each variant wrote the sequential bytes (the
threaded numpy loop must; the tensor loop agrees to float32 rounding, docs/inference.md).

    python benchmarks/pipeline.py --side 1024 --ngf 8 --repeat 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from inference import write_model, write_scene

from p2p.core.config import PredictConfig, SceneConfig
from p2p.infer import runtime, strips
from p2p.infer.inference import predict_scene
from p2p.model.bundle import load_bundle

#: (name, pipeline depth, device types that run the torch-tensor loop).
VARIANTS = [
    ("sequential", 0, ("cuda",)),
    ("threaded", strips.PIPELINE_DEPTH, ("cuda",)),
    ("threaded, tensors", strips.PIPELINE_DEPTH, ("cpu", "cuda")),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--ngf", type=int, default=8)
    parser.add_argument("--num-downs", type=int, default=8)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_model(folder / "model", args.ngf, args.num_downs)
        write_scene(folder / "scene.tif", args.side)
        bundle = load_bundle(folder / "model")
        config = PredictConfig(tile_size=args.tile, overlap=args.overlap, batch_size=args.batch,
                               output_format="gtiff", device=args.device, tta=args.tta)  # fmt: skip
        times: dict[str, list[float]] = {name: [] for name, _, _ in VARIANTS}
        outputs: dict[str, bytes] = {}
        for _ in range(args.repeat):
            for name, depth, devices in VARIANTS:
                strips.PIPELINE_DEPTH, runtime.TENSOR_DEVICES = depth, devices
                out = folder / f"{name}.tif"
                start = time.perf_counter()
                predict_scene(bundle, SceneConfig(source=str(folder / "scene.tif")), out, config)
                times[name].append(time.perf_counter() - start)
                outputs[name] = out.read_bytes()
    threads = torch.get_num_threads()
    print(f"scene {args.side}² x 3 uint16, U-Net ngf={args.ngf} num_downs={args.num_downs}, "
          f"tile {args.tile}, overlap {args.overlap}, batch {args.batch}, tta {args.tta}, "
          f"{args.device} ({threads} torch threads); best of {args.repeat}")  # fmt: skip
    print("\n| engine | best s | median s | vs sequential (best) | same bytes |")
    print("|---|---|---|---|---|")
    base = min(times["sequential"])
    for name, _, _ in VARIANTS:
        ts = sorted(times[name])
        same = outputs[name] == outputs["sequential"]
        print(f"| {name} | {ts[0]:.2f} | {ts[len(ts) // 2]:.2f} | {ts[0] / base:.2f} | {same} |")


if __name__ == "__main__":
    main()
