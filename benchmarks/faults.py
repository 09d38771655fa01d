"""Benchmark: how much work a rerun redoes after a SIGKILL in the middle of a stage.

For each stage (tile, train, predict) it times, in fresh processes and excluding imports:

- full: the stage uninterrupted in an empty workspace;
- resume: the same stage rerun in a workspace where a run was SIGKILLed half way (just before
  the commit of the middle block marker / epoch checkpoint / row-strip state);

and prints resume/full (goal ≤ 0.6 for a kill at the middle). Kills are placed by the same
`os.replace` hook as `tests/fault_pipeline.py`, so they land at a reproducible point.

    python benchmarks/faults.py            # ~40 s on 2 CPU cores; sub-second stages, noisy
    python benchmarks/faults.py --scale 2  # ~70 s: 4x the area, 2x the epochs (reported)

Train's ratio sits above the share of epochs redone by its fixed start-up (model build,
first-step warm-up), which both runs pay once.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

ROOT = Path(__file__).resolve().parents[1]
UTM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 1000000.0)


def write_data(folder: Path, scale: int) -> dict[str, Any]:
    """A training pair of (512·scale)² px and a (2048·scale) x 256 px scene to predict."""
    import rasterio

    folder.mkdir(parents=True, exist_ok=True)
    size, tall = 512 * scale, 2048 * scale

    def write(path: Path, data: np.ndarray) -> str:
        profile = {
            "driver": "GTiff", "width": data.shape[2], "height": data.shape[1],
            "count": data.shape[0], "dtype": "uint16", "crs": "EPSG:32633", "transform": UTM,
            "nodata": 0, "tiled": True, "blockxsize": 256, "blockysize": 256,
        }  # fmt: skip
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
        return str(path)

    def bands(h: int, w: int) -> np.ndarray:
        yy, xx = np.mgrid[0:h, 0:w]
        return np.stack([100 + 80 * np.sin(xx / 6.0) * np.cos(yy / 9.0), 50 + 0.05 * yy + xx / 9])

    src = bands(size, size)
    return {
        "src": write(folder / "src.tif", (src + 1).astype(np.uint16)),
        "tgt": write(folder / "tgt.tif", (3 * src[:1] + src[1:] + 1).astype(np.uint16)),
        "scene": write(folder / "scene.tif", (bands(tall, 256) + 1).astype(np.uint16)),
        "epochs": 4 * scale,
    }


def install_kill_hook(kill_on: str, nth: int) -> None:
    """SIGKILL this process just before the `nth` os.replace onto a path matching `kill_on`."""
    real, pattern, seen = os.replace, re.compile(kill_on), [0]

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if pattern.search(str(dst)):
            seen[0] += 1
            if seen[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst, *args, **kwargs)

    os.replace = replace  # type: ignore[assignment]


def child(stage: str, ws: str, data: dict[str, Any]) -> float:
    """Run one stage (building what it needs first, untimed); return the stage's seconds."""
    import torch
    from distributed import Client

    from p2p.core.config import (
        DaskConfig,
        DatasetConfig,
        ModelConfig,
        PredictConfig,
        SceneConfig,
        TilingConfig,
        TrainConfig,
    )  # fmt: skip
    from p2p.stages.dataset import run as dataset_stage
    from p2p.stages.predict import run as predict_stage
    from p2p.stages.tile import run as tile_stage
    from p2p.stages.train import run as train_stage

    torch.set_num_threads(1)
    tiling = TilingConfig(chip_size=64, stride=64, block_chips=2)
    scene = SceneConfig(source=data["src"], target=data["tgt"])
    model = ModelConfig(num_downs=3, ngf=8, ndf=8, n_layers_d=2, dropout=0.0)
    train = TrainConfig(epochs=data["epochs"], batch_size=8, device="cpu", preview_chips=1)
    predict = PredictConfig(tile_size=64, overlap=8, batch_size=8, device="cpu")
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as c:
        if stage == "tile":
            start = time.perf_counter()
            tile_stage(ws, scene, tiling, DaskConfig(), client=c)
            return time.perf_counter() - start
        prep = data["prep"]  # tile + dataset (+ train) built once by the parent
        tile = tile_stage(prep, scene, tiling, DaskConfig(), client=c)
    dataset = dataset_stage(prep, [tile.path], DatasetConfig(val_fraction=0.2), tiling)
    if stage == "train":
        start = time.perf_counter()
        train_stage(ws, dataset, model, train)
        return time.perf_counter() - start
    bundle = train_stage(prep, dataset, model, train).summary["model"]
    start = time.perf_counter()
    predict_stage(ws, bundle, SceneConfig(source=data["scene"]), predict)
    return time.perf_counter() - start


def run_child(stage: str, ws: Path, data: dict[str, Any], kill: tuple[str, int] | None) -> Any:
    args = [sys.executable, __file__, "--child", stage, str(ws), json.dumps(data)]
    if kill:
        args += [kill[0], str(kill[1])]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT)


def kill_point(stage: str, data: dict[str, Any], scale: int) -> tuple[str, int]:
    """The middle commit of each stage: half the blocks, epochs or row strips are done."""
    if stage == "tile":
        blocks = (512 * scale // 64 // 2) ** 2
        return r"/blocks/\d+_\d+\.done$", blocks // 2 + 1
    if stage == "train":
        return rf"/checkpoints/epoch_{data['epochs'] // 2 + 1:04d}\.safetensors$", 1
    strips = 2048 * scale // 256
    return r"/\.scene\.tif\.state\.json$", strips // 2 + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=1, help="Grow area (x²) and epochs (x).")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        stage, ws, data_json, *kill = args.child
        if kill:
            install_kill_hook(kill[0], int(kill[1]))
        print(json.dumps({"seconds": child(stage, ws, json.loads(data_json))}))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_data(root / "data", args.scale) | {"prep": str(root / "prep")}
        assert run_child("predict", root / "warm", data, None).returncode == 0  # builds prep
        print(f"device: cpu (every stage pinned to it), {os.cpu_count()} cores, scale {args.scale}")
        print(f"{'stage':<8} {'full s':>8} {'resume s':>9} {'resume/full':>12}  killed at")
        for stage in ("tile", "train", "predict"):
            full = run_child(stage, root / f"full-{stage}", data, None)
            pattern, nth = kill_point(stage, data, args.scale)
            ws = root / f"killed-{stage}"
            killed = run_child(stage, ws, data, (pattern, nth))
            assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
            resumed = run_child(stage, ws, data, None)
            assert full.returncode == 0 and resumed.returncode == 0, resumed.stderr[-2000:]
            t_full = json.loads(full.stdout.splitlines()[-1])["seconds"]
            t_resume = json.loads(resumed.stdout.splitlines()[-1])["seconds"]
            where = f"commit {nth} of {pattern}"
            print(f"{stage:<8} {t_full:8.2f} {t_resume:9.2f} {t_resume / t_full:12.2f}  {where}")


if __name__ == "__main__":
    main()
