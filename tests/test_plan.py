"""Stages declared once: keys in one module each, the plan and its reasons, --force, Export
Tiles folders as training scenes."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, get_args

import pytest
import rasterio
from rasterio.windows import Window

from p2p.core.config import ExportTilesConfig, PipelineConfig
from p2p.core.configfile import parse_config
from p2p.core.roots import checked_pipeline_config
from p2p.demo import DemoScenes, demo_config, write_demo_scenes
from p2p.stages import tile
from p2p.stages.pipeline import TRAINING, UNTIL, in_process, run_steps
from p2p.stages.plan import Planned, force, plan

ROOT = Path(__file__).resolve().parents[1]
STAGE_NAMES = "TILE|IMPORT|DATASET|TRAIN|EVALUATE|PREDICT|MOSAIC|REPORT"
#: A stage version, key function or task key lookup spelled outside its stage module.
STAGE_SPELLINGS = rf"def _key\(|\b({STAGE_NAMES})_VERSION\b|def \w+_stage_key\(|_key_parts\("


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> DemoScenes:
    return write_demo_scenes(tmp_path_factory.mktemp("scenes"), scene_size=96)


def _config(ws: Path, data: DemoScenes, **updates: Any) -> PipelineConfig:
    base = demo_config(ws, data.train[:2], quick=True)
    return checked_pipeline_config(base.model_copy(update=updates))


def _by_label(entries: list[Planned]) -> dict[str, Planned]:
    return {e.label: e for e in entries}


def test_each_stage_version_and_key_live_in_one_module() -> None:
    versions = {
        p.name: re.findall(r"^VERSION = \d+$", p.read_text(), re.M)
        for p in (ROOT / "p2p" / "stages").glob("*.py")
    }
    stage_modules = sorted(n for n, found in versions.items() if found)
    assert stage_modules == [
        "dataset.py",
        "evaluate.py",
        "import_tiles.py",
        "mosaic.py",
        "predict.py",
        "report.py",
        "tile.py",
        "train.py",
    ]
    assert all(len(found) <= 1 for found in versions.values())
    code = [p for d in ("p2p", "tasks", "flows") for p in (ROOT / d).rglob("*.py")]
    offenders = [
        str(p.relative_to(ROOT)) for p in code if re.search(STAGE_SPELLINGS, p.read_text())
    ]
    assert offenders == []


def test_the_flow_form_offers_the_declared_stop_points() -> None:
    from flows.train_pipeline import Until

    assert get_args(Until) == UNTIL  # the Literal the Prefect UI renders is checked here


def test_stage_parts_take_the_run_arguments_by_name(data: DemoScenes) -> None:
    cfg = demo_config("ws", data.train, quick=True)
    arguments = {"scene": data.train[0], "tiling": cfg.tiling, "dask": cfg.dask, "other": 1}
    assert tile.STAGE.parts(arguments) == tile.key_parts(data.train[0], cfg.tiling)


def test_plan_names_what_changed_and_force_rebuilds_downstream(
    data: DemoScenes, tmp_path: Path
) -> None:
    ws = tmp_path / "ws"
    cfg = _config(ws, data)
    fresh = plan(TRAINING, cfg, cfg.workspace, until="dataset")
    assert [e.status for e in fresh] == ["run", "run", "run"]
    assert fresh[0].why == "never built in this workspace"
    built = run_steps(TRAINING, cfg, cfg.workspace, in_process(), until="dataset")
    after = plan(TRAINING, cfg, cfg.workspace, until="dataset")
    assert [e.status for e in after] == ["cached"] * 3
    assert {e.label: e.record.key for e in after} == {n: r.key for n, r in built.items()}

    seed = cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={"seed": 7})})
    entries = _by_label(plan(TRAINING, seed, cfg.workspace, until="dataset"))
    assert entries["tile:train_1"].status == "cached"
    assert entries["dataset"].status == "run" and entries["dataset"].why == "dataset.seed: 0 → 7"

    stride = cfg.tiling.stride
    finer = cfg.model_copy(update={"tiling": cfg.tiling.model_copy(update={"stride": 8})})
    entries = _by_label(plan(TRAINING, finer, cfg.workspace, until="dataset"))
    assert entries["tile:train_1"].why == f"tiling.stride: {stride} → 8"
    assert "upstream tile:train_1 changed" in entries["dataset"].why

    source = Path(data.train[1].source[0])
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    entries = _by_label(plan(TRAINING, cfg, cfg.workspace, until="dataset"))
    assert entries["tile:train_1"].status == "cached"
    assert entries["tile:train_2"].why == f"{source} changed on disk"
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns - 10**9))

    entries = plan(TRAINING, cfg, cfg.workspace, until="dataset")
    assert force(entries, "dataset") == ["dataset"]
    assert not Path(built["dataset"].path).exists()
    assert Path(built["tile:train_1"].path, "manifest.json").is_file()
    again = run_steps(TRAINING, cfg, cfg.workspace, in_process(), until="dataset")
    assert not again["dataset"].cached and again["tile:train_1"].cached
    assert again["dataset"].key == built["dataset"].key
    entries = plan(TRAINING, cfg, cfg.workspace, until="dataset")
    assert force(entries, "tile") == ["tile:train_1", "tile:train_2", "dataset"]
    assert [e.status for e in plan(TRAINING, cfg, cfg.workspace, until="dataset")] == ["run"] * 3


def _export(folder: Path, scene: Any, size: int, count: int) -> None:
    """An Export Tiles folder of `count` georeferenced chip pairs cut from a demo scene."""
    for sub in ("images", "images2"):
        (folder / sub).mkdir(parents=True)
    for n in range(count):
        window = Window(n * size, 0, size, size)
        for sub, path in (("images", scene.source[0]), ("images2", scene.target[0])):
            with rasterio.open(path) as src:
                profile = src.profile | {
                    "width": size,
                    "height": size,
                    "transform": src.window_transform(window),
                    "tiled": False,
                }
                profile.pop("blockxsize", None), profile.pop("blockysize", None)
                with rasterio.open(folder / sub / f"{n:09d}.tif", "w", **profile) as dst:
                    dst.write(src.read(window=window))


def test_export_tiles_folders_train_alongside_scene_pairs(data: DemoScenes, tmp_path: Path) -> None:
    _export(tmp_path / "export", data.train[2], 32, 3)
    raw = demo_config(tmp_path / "ws", data.train[:1], quick=True).model_dump(mode="json")
    raw["scenes"].append({"export_tiles": str(tmp_path / "export")})
    cfg = checked_pipeline_config(parse_config(raw))
    assert isinstance(cfg.scenes[1], ExportTilesConfig)
    records = run_steps(TRAINING, cfg, cfg.workspace, in_process(), until="dataset")
    assert list(records) == ["import:export", "tile:train_1", "dataset"]
    assert records["import:export"].summary["n_chips"] == 3
    assert Path(records["import:export"].path).parent.name == "import"
    ds = records["dataset"].summary
    both = records["import:export"].summary["n_chips"] + records["tile:train_1"].summary["n_chips"]
    assert 0 < ds["n_train"] + ds["n_val"] <= both
    assert ds["tile_dirs"] == [records["tile:train_1"].path, records["import:export"].path]
    assert [e.status for e in plan(TRAINING, cfg, cfg.workspace, until="dataset")] == ["cached"] * 3
