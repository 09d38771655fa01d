"""Benchmark: training samples/s with 1 process and with N data-parallel processes (torchrun).

Builds a chip dataset from the demo's synthetic scenes (tile + dataset stages), then runs the
real train stage once per process count, side by side in one run, on the same dataset, model
and per-process batch. Samples/s come from the stage's own ``metrics.jsonl`` (the last epoch's
``seconds``: a warm epoch, without process start-up), so the figure is the training loop's
throughput. Efficiency = (samples/s with N) / (N × samples/s with 1); the goal on GPUs is
≥ 90% from 1 to 8.

    python benchmarks/train_ddp.py                              # CPU: 1 vs 2 processes (gloo)
    python benchmarks/train_ddp.py --device cuda --procs 1 2 4 8   # GPUs (NCCL)

On the CPU the processes share the machine's cores (torchrun's ranks get cores/N threads
each), so the speed-up shows the cost of the gradient exchange, not more compute; a row of one
process on one thread shows the per-core rate (on a busy machine, multi-threaded torch can be
far slower than one thread: compare the rows, and rerun when the machine is quiet).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

from p2p.core.config import DaskConfig, TrainConfig
from p2p.demo import demo_config, write_demo_scenes
from p2p.stages.dataset import run as dataset_stage
from p2p.stages.tile import run as tile_stage
from p2p.stages.train import run as train_stage


def samples_per_second(folder: Path, n_train: int) -> float:
    """The last epoch's throughput from the stage's metrics.jsonl."""
    last = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
    return n_train / float(last["seconds"])


def table(rates: dict[tuple[int, int], float], per_device: bool) -> str:
    """The markdown table: speed-ups against the best single process (whichever thread count
    ran fastest), never against a slower configuration of one process.

    Args:
        rates: (processes, threads each) → samples/s.
        per_device: Whether each process has a device of its own (GPUs): then efficiency =
            speed-up / processes; on a CPU the processes share the cores and it means nothing.
    """
    base = max((key for key in rates if key[0] == 1), key=lambda key: rates[key])
    lines = [
        "| processes | threads each | samples/s | speed-up | efficiency |",
        "|---|---|---|---|---|",
    ]
    for (n, threads), rate in rates.items():
        speedup = rate / rates[base]
        efficiency = f"{speedup / n:.0%}" if per_device else "-"
        mark = " (baseline: best single process)" if (n, threads) == base else ""
        lines.append(f"| {n} | {threads}{mark} | {rate:.1f} | {speedup:.2f}x | {efficiency} |")
    return "\n".join(["", *lines])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=4, help="Chips per step per process.")
    parser.add_argument("--chip", type=int, default=64)
    parser.add_argument("--ngf", type=int, default=32)
    parser.add_argument("--scene", type=int, default=384, help="Demo scene side in pixels.")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        data = write_demo_scenes(ws / "scenes", scene_size=args.scene)
        cfg = demo_config(ws, data.train)
        tiling = cfg.tiling.model_copy(update={"chip_size": args.chip, "stride": args.chip // 2})
        dask = DaskConfig(n_workers=1, threads_per_worker=2)
        tiles = [tile_stage(ws, s, tiling, dask) for s in data.train]
        ds = dataset_stage(ws, [t.path for t in tiles], cfg.dataset, tiling)
        n_train = int(ds.summary["n_train"])
        model = cfg.model.model_copy(update={"ngf": args.ngf, "ndf": args.ngf})
        cores = os.cpu_count() or 1
        runs = [(n, max(1, cores // n)) for n in args.procs]  # (processes, threads each)
        if args.device == "cpu" and cores > 1:
            runs.insert(1, (1, 1))
        rates = {}
        for n, threads in runs:
            train_cfg = TrainConfig(
                epochs=args.epochs, batch_size=args.batch, device=args.device, devices=n,
                preview_chips=0, seed=0,
            )  # fmt: skip
            torch.set_num_threads(
                threads
            )  # one process trains here; ranks get theirs from torchrun
            record = train_stage(ws / f"procs{n}x{threads}", ds, model, train_cfg)
            rates[n, threads] = samples_per_second(Path(record.path), n_train)
        cpu = f"CPU, {os.cpu_count()} cores"
        label = torch.cuda.get_device_name() if args.device == "cuda" else cpu
        print(
            f"device: {label}; U-Net ngf={args.ngf} num_downs={model.num_downs}, chips "
            f"{args.chip}², {n_train} train chips, batch {args.batch} per process, "
            f"last of {args.epochs} epochs"
        )
        print(table(rates, args.device == "cuda"))


if __name__ == "__main__":
    main()
