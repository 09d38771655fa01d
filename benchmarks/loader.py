"""Benchmark: the training data loader alone beside the training step it feeds.

Tiles a generated scene pair into `--chip`² chips (the real tile and dataset stages, LZ4 chip
store), then prints, side by side in one run:

- loader: chips/s that `ChipDataset` (train split, augmented) through a DataLoader delivers
  at `--batch` with `num_workers` 0, 2 and 4 (each DataLoader worker on one thread, as
  `p2p.model.epoch.seed_worker` sets it), batches only drawn, nothing computed;
- step: chips/s of p2p's training step (`train_step` on `build_pix2pix`, the paper's U-Net by
  default) at the same batch on `--device`, on random batches already on the device;

and loader / step (above 1: the loader keeps up). On a GPU the question is whether the loader
feeds batch 64 (see docs/training.md):

    python benchmarks/loader.py --device cuda --batch 64 --chips 1024        # on a GPU box
    python benchmarks/loader.py --device cpu --batch 4 --ngf 8 --chips 128   # quick, on CPU
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from threads import make_dataset
from train_step import _batch, _setup, _sync, _time

from p2p.data.dataset import ChipDataset
from p2p.model.epoch import seed_worker
from p2p.model.pix2pix import select_device


def loader_rate(dataset_dir: Path, batch: int, workers: int, batches: int) -> float:
    """Chips/s the DataLoader delivers (after its first batch: worker start-up excluded)."""
    data = ChipDataset(dataset_dir, "train", augment=True)
    loader = DataLoader(
        data, batch_size=batch, shuffle=True, num_workers=workers, worker_init_fn=seed_worker,
        drop_last=True, persistent_workers=False,
    )  # fmt: skip
    chips, start = 0, 0.0
    for i, (x, _, _) in enumerate(loader):
        if i == 0:
            start = time.perf_counter()
            continue
        chips += x.shape[0]
        if i == batches:
            break
    return chips / (time.perf_counter() - start)


def step_rate(args: argparse.Namespace, device: torch.device) -> float:
    """Chips/s of p2p's training step at `--batch` on random batches on the device."""
    ns = argparse.Namespace(
        num_downs=min(8, args.chip.bit_length() - 1), ngf=args.ngf, ndf=args.ngf,
        linear_anchor=True, precision="auto", in_bands=3, out_bands=1, size=args.chip,
    )  # fmt: skip
    run = _setup(ns, device, True)
    batch = _batch(ns, run, args.batch)
    tuned = device.type == "cuda"
    _time(run, batch, 2, tuned)
    _sync(device)
    return args.batch / _time(run, batch, args.steps, tuned)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chip", type=int, default=256)
    parser.add_argument("--chips", type=int, default=256, help="Chips tiled (about).")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=8, help="Batches timed per loader.")
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()
    device = select_device(args.device)
    side = args.chip * max(2, round(args.chips**0.5))
    with tempfile.TemporaryDirectory() as tmp:
        dataset_dir = make_dataset(Path(tmp), side, args.chip)
        step = step_rate(args, device)
        rates = {w: loader_rate(dataset_dir, args.batch, w, args.batches) for w in args.workers}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"device: {name}, {torch.get_num_threads()} threads; chips {args.chip}², 3 -> 1 bands, "
        f"batch {args.batch}, U-Net ngf {args.ngf}; load average {os.getloadavg()[0]:.1f}\n"
    )
    print("| num_workers | loader chips/s | step chips/s | loader / step |")
    print("|---|---|---|---|")
    for workers, rate in rates.items():
        print(f"| {workers} | {rate:.0f} | {step:.1f} | {rate / step:.1f} |")


if __name__ == "__main__":
    main()
