"""Benchmark: what rerunning `p2p predict` costs after a SIGKILL at half its wall time.

Runs the installed `p2p predict` as a user would (a subprocess each time), on a `--side`²
uint16 scene with a small U-Net bundle written here (tile 256, overlap 32 by default):

- full: one uninterrupted run into an empty folder;
- killed: the same command in another empty folder, SIGKILLed at half the full run's wall time;
- resume: the same command again in that folder (it resumes the killed run);

checks that both outputs have the same sha256, and prints full s, killed-at s, resume s and
resume/full (goal ≤ 0.6), with the CPU seconds (user + system) of the full, killed and resumed
processes: killed + resume - full is the work paid twice (start-up, the window row in
progress), less sensitive to other work on the machine than wall time; the wall time of
rerunning the command once the output is finished (every stage cached); and the load average
after each case. As a run killed at half its wall time T has done T/2 - S of work (S: its
start-up), resume ≈ T/2 + S + the window row lost: resume/full ≈ 0.5 + (S + row)/T. On a
loaded machine wall times vary by several times between runs: compare rows measured close
together, and see the load column. `--mosaic` adds the same for the mosaic stage alone: two
overlapping halves of the scene are predicted once, then the mosaic is rebuilt from the cached
predictions (full), killed at half of that, and resumed.

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


def predict(args: list[str], kill_after: float | None = None) -> tuple[float, float]:
    """Run `p2p predict ARGS` (SIGKILL it after `kill_after` s); return its wall and CPU
    seconds (user + system, from its own rusage)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([str(P2P), "predict", *args], stdout=subprocess.DEVNULL, stderr=err)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if kill_after is not None and time.perf_counter() - start >= kill_after:
                os.kill(proc.pid, signal.SIGKILL)
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.01)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if kill_after is None and proc.returncode:
            err.seek(0)
            sys.exit(f"p2p predict {' '.join(args)} failed:\n{err.read().decode()}")
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime


def measure(label: str, args: list[str], out: Path, before: list[str] | None = None) -> str:
    """Full, killed and resumed runs of `p2p predict ARGS --output {folder}/out.tif`; `before`
    runs first (untimed) in each folder."""
    times, cpu, digests = {}, {}, {}
    for case in ("full", "killed"):
        folder = out / f"{label}-{case}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        run = [*args, "--output", str(folder / "out.tif")]
        if before is not None:
            predict([*before, "--output", str(folder / "out.tif")])
            shutil.rmtree(folder / ".p2p-work" / "mosaic")
            (folder / "out.tif").unlink()
        if case == "full":
            times["full"], cpu["full"] = predict(run)
            times["rerun"] = predict(run)[0]  # finished: everything comes from the cache
        else:
            times["killed"], cpu["killed"] = predict(run, kill_after=times["full"] / 2)
            if (folder / "out.tif").exists():  # the machine got faster: no kill, no figure
                return f"| {label} | {times['full']:.1f} | finished before the kill |"
            times["resume"], cpu["resume"] = predict(run)
        digests[case] = sha256(folder / "out.tif")
    same = "yes" if digests["full"] == digests["killed"] else "NO"
    ratio = times["resume"] / times["full"]
    redone = (cpu["killed"] + cpu["resume"]) / cpu["full"] - 1
    return (
        f"| {label} | {times['full']:.1f} | {times['killed']:.1f} | {times['resume']:.1f} "
        f"| **{ratio:.2f}** | {cpu['full']:.1f} | {cpu['killed']:.1f} | {cpu['resume']:.1f} "
        f"| {100 * redone:+.0f} % | {times['rerun']:.2f} | {same} | {os.getloadavg()[0]:.1f} |"
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
    parser.add_argument(
        "--tta",
        action="store_true",
        help="Predict with test-time augmentation (p2p's default; 8 forwards per window). "
        "Without it, one forward per window: the compute of the issue's case.",
    )
    parser.add_argument("--repeat", type=int, default=1, help="Measure each case this often.")
    parser.add_argument("--keep", type=Path, help="Work here and keep it (default: a temp dir).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        write_model(root / "model", args.ngf, args.num_downs)
        write_scene(root / "scene.tif", args.side)
        common = ["--model", str(root / "model"), "--tile-size", str(args.tile),
                  "--overlap", str(args.overlap), "--format", args.format,
                  "--tta" if args.tta else "--no-tta"]  # fmt: skip
        print(f"p2p predict, {args.side}² x 3 bands uint16, U-Net ngf {args.ngf} num_downs "
              f"{args.num_downs}, tile {args.tile}, overlap {args.overlap}, {args.format}, "
              f"TTA {'on' if args.tta else 'off'}; "
              f"{os.cpu_count()} cores; load before: {os.getloadavg()[0]:.1f}")  # fmt: skip
        print("\n| case | full s | killed at s | resume s | resume/full | full CPU s "
              "| killed CPU s | resume CPU s | CPU paid twice | finished rerun s | same sha256 "
              "| load |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for _ in range(args.repeat):
            scene = [*common, "--input", str(root / "scene.tif")]
            print(measure("predict", scene, root), flush=True)
        if args.mosaic:
            halves = [a for p in split_scene(root / "scene.tif", root, args.side)
                      for a in ("--input", p)]  # fmt: skip
            for _ in range(args.repeat):
                print(measure("mosaic", [*common, *halves], root, before=[*common, *halves]))
        print(f"\nload after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
