"""Benchmark: the CPU forward, window-parallel (p2p's) against torch's own intra-op threads.

p2p runs each window alone on one intra-op thread and the thread budget's threads side by side
(`p2p.infer.cpuforward`), so the pixels do not depend on the thread count; torch's intra-op
threads split each convolution's sums, and the split depends on the count. This prints, for
each thread count and with `--hogs` busy processes on the same cores (0 = idle), the seconds
per batch of both ways (median of `--repeat`, interleaved in one run), their ratio, and
whether each way gave the same pixels as on one thread. Nothing here asserts timing.

    python benchmarks/forward.py                  # ngf 16 and 64, idle and beside 2 hogs
    python benchmarks/forward.py --ngf 64 --hogs 0
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from threads import start_hogs, stop_hogs

from p2p.core.threads import available_cores
from p2p.infer.translator import Translator
from p2p.model.networks.unet import UNetGenerator


def seconds(translator: Translator, x: torch.Tensor, repeat: int) -> tuple[float, torch.Tensor]:
    translator.run(x)  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        y = translator.run(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times), y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ngf", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--hogs", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cores = available_cores()
    counts = sorted({1, 2, cores, 2 * cores})
    print(f"cores {cores}; batch {args.batch} x 3 x {args.tile}²; load {os.getloadavg()[0]:.1f}")
    print(
        "| ngf | hogs | threads | window-parallel s | intra-op s | ratio "
        "| same as 1 thread (wp / intra) |"
    )
    print("|---|---|---|---|---|---|---|")
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.tile, args.tile)
    for ngf in args.ngf:
        generator = UNetGenerator(3, 3, num_downs=8, ngf=ngf, linear_anchor=True).eval()
        for hogs in args.hogs:
            procs = start_hogs(hogs)
            try:
                first: dict[str, torch.Tensor] = {}
                for threads in counts:
                    torch.set_num_threads(threads)
                    parallel = Translator(generator, torch.device("cpu"))
                    intra = Translator(generator, torch.device("cpu"))
                    intra.parallel = None
                    wp_s, wp = seconds(parallel, x, args.repeat)
                    in_s, intra_y = seconds(intra, x, args.repeat)
                    first.setdefault("wp", wp)
                    first.setdefault("intra", intra_y)
                    same = (
                        f"{torch.equal(wp, first['wp'])} / {torch.equal(intra_y, first['intra'])}"
                    )
                    print(
                        f"| {ngf} | {hogs} | {threads} | {wp_s:.3f} | {in_s:.3f} "
                        f"| {wp_s / in_s:.2f} | {same} |",
                        flush=True,
                    )
            finally:
                stop_hogs(procs)
    print(f"load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
