"""Benchmark: p2p's default thread budget vs explicit thread counts, beside busy processes.

Starts `--hogs` busy processes (``while True: pass``) pinned to the same cores this benchmark
may use, then times, interleaved in one run:

- `p2p predict` (the installed console script, a fresh workspace each time, start-up
  included) of a `--side`² 3-band uint16 scene with a small U-Net, and
- one epoch of the train stage (a subprocess running `p2p.stages.train.run` after applying the
  budget exactly as a Prefect task does) on chips tiled from a pair of such scenes,

with p2p's default (the budget from affinity and cgroup quota) and with ``--threads N`` for
N = 1 … cores (and 2 x cores, to show oversubscription), and, as it was before the budget,
``--threads cores`` with OpenMP's waiting threads spinning (``spin``: GNU OpenMP's default
wait policy, which p2p now replaces with PASSIVE). Prints seconds (median of `--repeat`) and
the ratio default / best explicit (goal <= 1.3). The hogs are killed at the
end. Nothing here asserts timing.

    python benchmarks/threads.py                      # 2 hogs, 512² scene, 3 repeats
    python benchmarks/threads.py --hogs 0 --repeat 1  # an idle machine, quick
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference import BANDS, write_model, write_scene

from p2p.core.threads import available_cores

P2P = shutil.which("p2p") or str(Path(sys.executable).with_name("p2p"))


def start_hogs(count: int) -> list[subprocess.Popen[bytes]]:
    """`count` busy Python processes on this process's cores (they inherit its affinity)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def stop_hogs(hogs: list[subprocess.Popen[bytes]]) -> None:
    for hog in hogs:
        hog.kill()
        hog.wait()


def write_pair(folder: Path, side: int) -> tuple[Path, Path]:
    """A source scene and a 1-band target that depends on it (something to learn)."""
    folder.mkdir(parents=True, exist_ok=True)
    source, target = folder / "src.tif", folder / "tgt.tif"
    write_scene(source, side, seed=2)
    with rasterio.open(source) as src:
        profile = src.profile | {"count": 1}
        data = src.read().astype(np.float32)
    with rasterio.open(target, "w", **profile) as dst:
        dst.write((0.5 * data[0] + 0.3 * data[1] + 0.2 * data[2]).astype(np.uint16)[None])
    return source, target


def make_dataset(folder: Path, side: int, chip: int = 64) -> Path:
    """Tile the pair into `chip`² chips and assemble the dataset stage; its folder."""
    from p2p.core.config import DaskConfig, DatasetConfig, SceneConfig, TilingConfig
    from p2p.stages import dataset, tile

    source, target = write_pair(folder, side)
    tiling = TilingConfig(chip_size=chip, stride=chip)
    scene = SceneConfig(source=str(source), target=str(target))
    tiles = tile.run(folder / "ws", scene, tiling, DaskConfig(n_workers=1, threads_per_worker=1))
    return Path(dataset.run(folder / "ws", [tiles], DatasetConfig(), tiling).path)


def train_child(dataset_dir: str, out: str, threads: str) -> None:
    """One epoch of the train stage in this process, with the budget a Prefect task applies."""
    from p2p.core.config import ModelConfig, TrainConfig
    from p2p.core.threads import apply_budget, task_budget

    explicit = threads.removesuffix(" spin")
    apply_budget(task_budget(int(explicit) if explicit != "default" else None))
    from p2p.stages import train

    model = ModelConfig(num_downs=6, ngf=16, ndf=16, dropout=0.0)
    cfg = TrainConfig(epochs=1, batch_size=4, device="cpu", preview_chips=0)
    start = time.perf_counter()
    train.run(out, dataset_dir, model, cfg)
    print(f"{time.perf_counter() - start:.3f}")


def _env(threads: str) -> dict[str, str]:
    """The benchmark's environment without thread settings; ``spin``: OpenMP's own wait
    policy (an invalid value makes GNU OpenMP warn and keep its default, and p2p leaves a set
    value alone)."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env.pop("OMP_WAIT_POLICY", None)
    if threads.endswith("spin"):
        env["OMP_WAIT_POLICY"] = "default"
    return env


def time_predict(folder: Path, threads: str, run: int) -> float:
    ws = folder / f"pws_{threads.replace(' ', '_')}_{run}"
    cmd = [P2P, "predict", "--model", str(folder / "model"), "--input", str(folder / "scene.tif"),
           "--output", str(ws / "out.tif"), "--workspace", str(ws), "--format", "gtiff",
           "--tile-size", "256", "--overlap", "32", "--no-tta"]  # fmt: skip
    cmd += [] if threads == "default" else ["--threads", threads.removesuffix(" spin")]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=_env(threads))
    seconds = time.perf_counter() - start
    shutil.rmtree(ws)
    return seconds


def time_train(folder: Path, dataset_dir: Path, threads: str, run: int) -> float:
    out = folder / f"tws_{threads.replace(' ', '_')}_{run}"
    cmd = [sys.executable, __file__, "--train-child", str(dataset_dir), str(out), threads]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=_env(threads))
    shutil.rmtree(out)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hogs", type=int, default=2, help="Busy processes beside p2p.")
    parser.add_argument("--side", type=int, default=512, help="Predicted scene side.")
    parser.add_argument("--train-side", type=int, default=512, help="Training scene side.")
    parser.add_argument("--ngf", type=int, default=16, help="Predicting U-Net's ngf.")
    parser.add_argument("--repeat", type=int, default=3, help="Timed runs (median kept).")
    parser.add_argument("--work", nargs="+", default=["predict", "train"],
                        choices=["predict", "train"], help="What to time.")  # fmt: skip
    parser.add_argument("--train-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train_child:
        train_child(*args.train_child)
        return
    cores = available_cores()
    settings = ["default", *(str(n) for n in range(1, cores + 1)), str(2 * cores)]
    settings.append(f"{cores} spin")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_model(folder / "model", args.ngf, 8)
        write_scene(folder / "scene.tif", args.side)
        dataset_dir = make_dataset(folder / "train", args.train_side)
        load_before = os.getloadavg()[0]
        hogs = start_hogs(args.hogs)
        try:
            time.sleep(1.0)
            times: dict[str, dict[str, list[float]]] = {"predict": {}, "train": {}}
            for run in range(args.repeat):  # interleaved: drift hits every setting alike
                for s in settings:
                    times["predict"].setdefault(s, []).append(time_predict(folder, s, run))
                    times["train"].setdefault(s, []).append(time_train(folder, dataset_dir, s, run))
            load_during = os.getloadavg()[0]
        finally:
            stop_hogs(hogs)
    print(
        f"{cores} cores available (affinity/cgroup), {args.hogs} busy processes on them; "
        f"load average {load_before:.1f} before, {load_during:.1f} at the end; "
        f"median of {args.repeat}; predict {args.side}² x {BANDS} bands ngf {args.ngf}, "
        f"train 1 epoch of 64² chips from {args.train_side}², batch 4, ngf 16"
    )
    print("\n| work | " + " | ".join(f"{s} s" for s in settings) + " | default / best |")
    print("|---" * (len(settings) + 2) + "|")
    for work, by_setting in times.items():
        medians = {s: statistics.median(v) for s, v in by_setting.items()}
        best = min(v for s, v in medians.items() if s != "default" and "spin" not in s)
        cells = " | ".join(f"{medians[s]:.2f}" for s in settings)
        print(f"| {work} | {cells} | {medians['default'] / best:.2f} |")


if __name__ == "__main__":
    main()
