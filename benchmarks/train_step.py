"""Throughput of one full Pix2Pix training step (G forward, D step, G step) at 256x256.

Prints samples/s for plain fp32 eager and for p2p's path (`build_pix2pix(optimized=True)`,
what `p2p.model.training.train` runs: channels_last + autocast bf16/fp16 + fused Adam + cuDNN
autotuning on CUDA; on CPU the same fp32 step), side by side in one run, with the device named;
`--compile` adds the same path under torch.compile, an experiment. On CUDA it also prints MFU:
FLOPs of one step counted by `torch.utils.flop_counter.FlopCounterMode`, divided by time and
by `--peak-tflops` (989 = H100 SXM dense BF16).

    python benchmarks/train_step.py                       # batch 1, 4, 16 at 256x256
    python benchmarks/train_step.py --batch-sizes 1 2 --size 128 --steps 3  # quick CPU run

Needs only torch (and p2p on the path).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2p.model.pix2pix import Pix2Pix, StepOptions, build_pix2pix, select_device, train_step


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--size", type=int, default=256, help="chip side in pixels")
    p.add_argument("--in-bands", type=int, default=3)
    p.add_argument("--out-bands", type=int, default=3)
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--ndf", type=int, default=64)
    p.add_argument(
        "--num-downs",
        type=int,
        default=None,
        help="U-Net levels (default: 8, fewer if --size < 256)",
    )
    p.add_argument(
        "--linear-anchor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the 1x1 least-squares path beside the U-Net (p2p's default model)",
    )
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; median is shown")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time p2p's path with G and D under torch.compile (an experiment)",
    )
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense BF16 peak of the GPU")
    return p.parse_args()


def _setup(a: argparse.Namespace, device: torch.device, optimized: bool) -> Pix2Pix:
    model = SimpleNamespace(
        num_downs=a.num_downs,
        ngf=a.ngf,
        ndf=a.ndf,
        n_layers_d=3,
        norm="batch",
        dropout=0.5,
        linear_anchor=a.linear_anchor,
    )
    cfg = SimpleNamespace(
        lr=2e-4,
        beta1=0.5,
        epochs=100,
        epochs_decay=100,
        precision=a.precision,
        seed=0,
        ema_epochs=0.0,
    )
    return build_pix2pix(model, cfg, a.in_bands, a.out_bands, device, optimized)  # type: ignore[arg-type]


def _batch(a: argparse.Namespace, run: Pix2Pix, n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    x = torch.rand(n, a.in_bands, a.size, a.size, generator=g) * 2 - 1
    y = torch.rand(n, a.out_bands, a.size, a.size, generator=g) * 2 - 1
    valid = torch.ones(n, 1, a.size, a.size)
    return run.to_device(x, y, valid)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(run: Pix2Pix, batch: list[torch.Tensor], steps: int, tuned: bool) -> float:
    """Seconds per step; `tuned`: cuDNN autotuning on, as `train` sets it on CUDA."""
    torch.backends.cudnn.benchmark = tuned
    _sync(run.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(run, *batch, StepOptions(lambda_l1=100.0))
    _sync(run.device)
    return (time.perf_counter() - t0) / steps


def _flops(run: Pix2Pix, batch: list[torch.Tensor]) -> int:
    with FlopCounterMode(display=False) as counter:
        train_step(run, *batch, StepOptions(lambda_l1=100.0))
    return int(counter.get_total_flops())


def main() -> None:
    a = _args()
    if a.num_downs is None:
        a.num_downs = min(8, a.size.bit_length() - 1)
    device = select_device(a.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    threads = torch.get_num_threads()
    runs = {"fp32 eager": _setup(a, device, False), "p2p": _setup(a, device, True)}
    if a.compile:
        runs["p2p+compile"] = _setup(a, device, True)
        runs["p2p+compile"].g_step = torch.compile(runs["p2p+compile"].g)  # type: ignore[assignment]
        runs["p2p+compile"].d_step = torch.compile(runs["p2p+compile"].d)  # type: ignore[assignment]
    tuned = {k: k != "fp32 eager" and device.type == "cuda" for k in runs}
    amp = runs["p2p"].amp_dtype
    print(f"device: {name} ({device}, {threads} CPU threads); torch {torch.__version__}")
    print(
        f"p2p path: {'channels_last, cuDNN autotuning, ' if runs['p2p'].channels_last else ''}"
        f"{'autocast ' + str(amp).removeprefix('torch.') if amp else 'fp32'}; "
        f"model ngf={a.ngf} ndf={a.ndf} num_downs={a.num_downs}; {a.size}x{a.size}, "
        f"{a.in_bands}->{a.out_bands} bands"
    )
    header = f"{'batch':>5} | " + " | ".join(f"{k + ' (samples/s)':>22}" for k in runs)
    header += f" | {'speedup':>7}"
    if a.compile:
        header += f" | {'compiled':>8}"
    if device.type == "cuda":
        header += f" | {'TFLOP/step':>10} | {'p2p TFLOPS':>10} | {'MFU':>6}"
    print(header)
    print("-" * len(header))
    for n in a.batch_sizes:
        batches = {k: _batch(a, r, n) for k, r in runs.items()}
        for k, r in runs.items():
            _time(r, batches[k], a.warmup, tuned[k])
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(a.rounds):  # alternate, so background load hits both alike
            for k, r in runs.items():
                times[k].append(_time(r, batches[k], a.steps, tuned[k]))
        rate = {k: n / statistics.median(v) for k, v in times.items()}
        row = f"{n:>5} | " + " | ".join(f"{rate[k]:>22.2f}" for k in runs)
        row += f" | {rate['p2p'] / rate['fp32 eager']:>6.2f}x"
        if a.compile:
            row += f" | {rate['p2p+compile'] / rate['p2p']:>7.2f}x"
        if device.type == "cuda":
            flops = _flops(runs["p2p"], batches["p2p"])
            achieved = flops * rate["p2p"] / n / 1e12
            row += (
                f" | {flops / 1e12:>10.3f} | {achieved:>10.1f} | {achieved / a.peak_tflops:>6.1%}"
            )
        print(row, flush=True)


if __name__ == "__main__":
    main()
