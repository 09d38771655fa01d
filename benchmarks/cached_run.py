"""Benchmark: a fully cached `p2p run` against the first run of the same config.

On generated demo-world scene pairs (real UTM GeoTIFFs) it times, in fresh processes, wall
clock including imports and any Prefect start-up:

- first: `python -m p2p run CONFIG --json` in an empty workspace (tile, dataset, train,
  evaluate);
- cached: the same command again, every stage cached;

and prints cached/first (goal: cached ≤ 2 s and ≤ 5% of first). With ``--before DIR`` (a
checkout of an older commit, e.g. ``git worktree add /tmp/before 0a20ced``) the same two runs
are timed with that code too, side by side, each in its own workspace.

    python benchmarks/cached_run.py                          # ~1-2 min on 2 CPU cores
    python benchmarks/cached_run.py --before /tmp/before     # and the older code beside it
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from p2p.demo import demo_config, write_demo_scenes

ROOT = Path(__file__).resolve().parents[1]


# `python -m p2p` from the checkout on PYTHONPATH: the editable install's finder (which maps
# p2p, flows and tasks to this checkout) is dropped first.
MAIN = (
    "import runpy, sys; sys.meta_path = [f for f in sys.meta_path if 'editable' not in "
    "repr(f)]; runpy.run_module('p2p', run_name='__main__')"
)


def timed_run(code: Path, config: Path) -> tuple[float, dict[str, object]]:
    """Seconds and record of `python -m p2p run CONFIG --json` with the p2p at `code`."""
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "2"}
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", MAIN, "run", str(config), "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=code,
        timeout=1800,
    )
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"p2p run failed with {code}:\n{out.stderr[-3000:]}")
    return seconds, json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene-size", type=int, default=192, help="Side of each scene (px).")
    parser.add_argument("--before", type=Path, help="A checkout of older code to compare.")
    args = parser.parse_args()
    codes = [("this", ROOT)] + ([("before", args.before.resolve())] if args.before else [])
    with tempfile.TemporaryDirectory() as tmp:
        data = write_demo_scenes(Path(tmp) / "data", args.scene_size)
        rows = []
        for name, code in codes:
            config = Path(tmp) / f"{name}.yaml"
            raw = demo_config(Path(tmp) / f"ws-{name}", data.train, quick=True)
            config.write_text(yaml.safe_dump(raw.model_dump(mode="json")))
            first, record = timed_run(code, config)
            cached, again = timed_run(code, config)
            stages = again["stages"]
            assert isinstance(stages, dict) and all(s["cached"] for s in stages.values())
            assert record["model"] == again["model"]
            rows.append((name, first, cached))
    print(f"scenes: 3 pairs of {args.scene_size}² px, demo quick config, CPU")
    print(f"{'code':<8} {'first s':>9} {'cached s':>9} {'cached/first':>13}")
    for name, first, cached in rows:
        print(f"{name:<8} {first:>9.2f} {cached:>9.2f} {cached / first:>13.3f}")


if __name__ == "__main__":
    main()
