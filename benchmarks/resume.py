"""Benchmark: what rerunning `p2p predict` costs after a SIGKILL at half its wall time.

Runs the installed `p2p predict` as a user would (a subprocess each time), on a `--side`²
uint16 scene with a small U-Net bundle written here (tile 256, overlap 32 by default):

- full: one uninterrupted run into an empty folder;
- killed: the same command in another empty folder, SIGKILLed at half the full run's wall time;
- resume: the same command again in that folder (it resumes the killed run);

checks that both outputs have the same sha256, and prints full s, killed-at s, resume s and
resume/full (goal ≤ 0.6). `--mosaic` adds the same for the mosaic stage alone: two overlapping
halves of the scene are predicted once, then the mosaic is rebuilt from the cached predictions
(full), killed at half of that, and resumed.

    python benchmarks/resume.py                        # 6144², U-Net ngf 8: minutes on 2 cores
    python benchmarks/resume.py --side 2048 --mosaic   # quicker
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import rasterio
from inference import write_model, write_scene
from rasterio.windows import Window

P2P = Path(sys.executable).with_name("p2p")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def predict(args: list[str], kill_after: float | None = None) -> float:
    """Run `p2p predict ARGS`; return its wall time (SIGKILL it after `kill_after` s)."""
    start = time.perf_counter()
    proc = subprocess.Popen([str(P2P), "predict", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        _, err = proc.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        return time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"p2p predict {' '.join(args)} failed:\n{err}")
    return time.perf_counter() - start


def measure(label: str, args: list[str], out: Path, before: list[str] | None = None) -> str:
    """Full, killed and resumed runs of `p2p predict ARGS --output {folder}/out.tif`; `before`
    runs first (untimed) in each folder."""
    times, digests = {}, {}
    for case in ("full", "killed"):
        folder = out / f"{label}-{case}"
        folder.mkdir()
        run = [*args, "--output", str(folder / "out.tif")]
        if before is not None:
            predict([*before, "--output", str(folder / "out.tif")])
            shutil.rmtree(folder / ".p2p-work" / "mosaic")
            (folder / "out.tif").unlink()
        if case == "full":
            times["full"] = predict(run)
        else:
            times["killed"] = predict(run, kill_after=times["full"] / 2)
            assert not (folder / "out.tif").exists(), "the run ended before the kill"
            times["resume"] = predict(run)
        digests[case] = sha256(folder / "out.tif")
    same = "yes" if digests["full"] == digests["killed"] else "NO"
    ratio = times["resume"] / times["full"]
    return (
        f"| {label} | {times['full']:.1f} | {times['killed']:.1f} | {times['resume']:.1f} "
        f"| {ratio:.2f} | {same} |"
    )


def split_scene(scene: Path, folder: Path, side: int) -> list[str]:
    """Two overlapping halves of the scene (60 % of its width each), as their own files."""
    paths = []
    width = side * 6 // 10
    with rasterio.open(scene) as src:
        for name, col in (("west", 0), ("east", side - width)):
            window = Window(col, 0, width, side)
            profile = src.profile | {"width": width, "transform": src.window_transform(window)}
            path = folder / f"{name}.tif"
            with rasterio.open(path, "w", **profile) as dst:
                for row in range(0, side, 1024):
                    part = Window(col, row, width, min(1024, side - row))
                    dst.write(src.read(window=part), window=Window(0, row, width, part.height))
            paths.append(str(path))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=6144)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--ngf", type=int, default=8)
    parser.add_argument("--num-downs", type=int, default=8)
    parser.add_argument("--format", default="cog", choices=["cog", "gtiff"])
    parser.add_argument("--mosaic", action="store_true", help="Also the mosaic stage alone.")
    parser.add_argument("--keep", type=Path, help="Work here and keep it (default: a temp dir).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        write_model(root / "model", args.ngf, args.num_downs)
        write_scene(root / "scene.tif", args.side)
        common = ["--model", str(root / "model"), "--tile-size", str(args.tile),
                  "--overlap", str(args.overlap), "--format", args.format]  # fmt: skip
        print(f"p2p predict, {args.side}² x 3 bands uint16, U-Net ngf {args.ngf} num_downs "
              f"{args.num_downs}, tile {args.tile}, overlap {args.overlap}, {args.format}; "
              f"{os.cpu_count()} cores; load before: {os.getloadavg()[0]:.1f}")  # fmt: skip
        print("\n| case | full s | killed at s | resume s | resume/full | same sha256 |")
        print("|---|---|---|---|---|---|")
        print(measure("predict", [*common, "--input", str(root / "scene.tif")], root), flush=True)
        if args.mosaic:
            halves = [a for p in split_scene(root / "scene.tif", root, args.side)
                      for a in ("--input", p)]  # fmt: skip
            print(measure("mosaic", [*common, *halves], root, before=[*common, *halves]))
        print(f"\nload after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
