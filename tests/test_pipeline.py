"""The pipeline glue without Prefect: train/evaluate stages, scene expansion, path checks."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from p2p.core.cache import StageRecord, finished_stage
from p2p.core.config import BatchPredictConfig, DaskConfig, MosaicConfig
from p2p.core.configfile import expand_scenes
from p2p.core.errors import InputError, PathNotAllowedError, StageError
from p2p.core.roots import checked_batch_config
from p2p.demo import DemoScenes, demo_config, write_demo_scenes
from p2p.infer.report import deliver_file
from p2p.model.bundle import load_bundle
from p2p.stages import mosaic, predict, train
from p2p.stages.dataset import run as dataset_stage
from p2p.stages.evaluate import run as evaluate_stage
from p2p.stages.mosaic import run as mosaic_stage
from p2p.stages.predict import run as predict_stage
from p2p.stages.tile import run as tile_stage
from p2p.stages.train import run as train_stage


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> DemoScenes:
    return write_demo_scenes(tmp_path_factory.mktemp("scenes"), scene_size=96)


@pytest.fixture(scope="module")
def dataset(data: DemoScenes, tmp_path_factory: pytest.TempPathFactory) -> StageRecord:
    ws = tmp_path_factory.mktemp("ws")
    cfg = demo_config(ws, data.train, quick=True)
    with_one_worker = DaskConfig(n_workers=1, threads_per_worker=1)
    tiles = [tile_stage(ws, s, cfg.tiling, with_one_worker) for s in data.train]
    return dataset_stage(ws, [t.path for t in tiles], cfg.dataset, cfg.tiling)


def test_train_then_evaluate_reproduces_validation_metrics(
    data: DemoScenes, dataset: StageRecord, tmp_path: Path
) -> None:
    cfg = demo_config(tmp_path, data.train, quick=True)
    trained = train_stage(tmp_path, dataset, cfg.model, cfg.train)
    folder = Path(trained.path)
    assert trained.key == train.key_parts(dataset, cfg.model, cfg.train).key
    assert folder == tmp_path / "train" / trained.key
    assert (folder / "metrics.jsonl").read_text().count("\n") == trained.summary["epochs"] == 2
    assert Path(trained.summary["preview"]).is_file()
    bundle = load_bundle(trained.summary["model"])
    assert list(bundle.meta.source_bands) == dataset.summary["source_bands"]
    assert bundle.meta.target_dtype == "uint8"

    evaluated = evaluate_stage(tmp_path, trained, dataset, cfg.predict)
    val = trained.summary["metrics"]["overall"]
    ev = evaluated.summary["metrics"]["overall"]
    # the bundle run over every validation chip gives the last epoch's validation numbers
    assert ev["mae"] == pytest.approx(val["mae"], rel=1e-4)
    assert ev["ssim"] == pytest.approx(val["ssim"], rel=1e-4)
    assert evaluated.summary["n_chips"] == dataset.summary["n_val"]
    assert (Path(evaluated.path) / "metrics.json").is_file()

    again = train_stage(tmp_path, dataset, cfg.model, cfg.train)
    assert again.cached and again.key == trained.key

    # the key parts the plan and the Prefect tasks use are the ones the stages really key on
    model, scene = trained.summary["model"], data.held_out[0]
    predicted = predict_stage(tmp_path, model, scene, cfg.predict)
    assert predicted.key == predict.key_parts(model, scene, cfg.predict).key
    outputs = [predicted.summary["output"]]
    merged = mosaic_stage(tmp_path, outputs, MosaicConfig(), "gtiff")
    assert merged.key == mosaic.key_parts(outputs, MosaicConfig(), "gtiff").key


def test_train_key_ignores_loader_workers_only(data: DemoScenes, dataset: StageRecord) -> None:
    cfg = demo_config("ws", data.train, quick=True)
    key = train.key_parts(dataset, cfg.model, cfg.train).key
    workers = cfg.train.model_copy(update={"num_workers": 3})
    epochs = cfg.train.model_copy(update={"epochs": 7})
    assert train.key_parts(dataset, cfg.model, workers).key == key
    assert train.key_parts(dataset, cfg.model, epochs).key != key
    other = dataset.model_copy(update={"key": "other-dataset"})
    assert train.key_parts(other, cfg.model, cfg.train).key != key


def test_unfinished_stage_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="has not finished"):
        finished_stage(tmp_path)


def test_expand_scenes_globs_band_lists_and_errors(tmp_path: Path) -> None:
    for name in ("b.tif", "a.tif", "x_B2.tif", "x_B3.tif"):
        (tmp_path / name).write_bytes(b"")
    scenes = expand_scenes([str(tmp_path / "[ab].tif"), f"{tmp_path}/x_B2.tif,{tmp_path}/x_B3.tif"])
    assert [s.scene_id for s in scenes] == ["a", "b", "x_B2"]
    assert scenes[2].source == [str(tmp_path / "x_B2.tif"), str(tmp_path / "x_B3.tif")]
    with pytest.raises(InputError, match="matches no file"):
        expand_scenes([str(tmp_path / "*.jp2")])
    with pytest.raises(InputError, match="file not found"):
        expand_scenes([str(tmp_path / "missing.tif")])
    with pytest.raises(InputError, match="repeats"):
        expand_scenes([str(tmp_path / "a.tif"), str(tmp_path / "a.tif")])


def test_batch_paths_must_stay_under_the_allowed_roots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "s.tif").write_bytes(b"")
    (tmp_path / "elsewhere.tif").write_bytes(b"")
    (tmp_path / "data" / "sneaky.tif").symlink_to(tmp_path / "elsewhere.tif")
    monkeypatch.setenv("P2P_ALLOWED_ROOTS", str(tmp_path / "data"))
    ok = BatchPredictConfig(
        workspace=str(tmp_path / "data" / "ws"),
        model=str(tmp_path / "data" / "m"),
        scenes=[str(tmp_path / "data" / "s.tif")],
        output=str(tmp_path / "data" / "o.tif"),
    )
    checked, scenes = checked_batch_config(ok)
    assert [s.scene_id for s in scenes] == ["s"]
    assert checked.output == str((tmp_path / "data" / "o.tif").resolve())
    bad = [
        ok.model_copy(update={"output": str(tmp_path / "o.tif")}),
        ok.model_copy(update={"scenes": [str(tmp_path / "data" / ".." / "*.tif")]}),
        ok.model_copy(update={"scenes": [str(tmp_path / "data" / "sneaky.tif")]}),
    ]
    for config in bad:
        with pytest.raises(PathNotAllowedError):
            checked_batch_config(config)


def test_deliver_file_writes_only_changes(tmp_path: Path) -> None:
    src, out = tmp_path / "a.bin", tmp_path / "out" / "a.bin"
    src.write_bytes(b"one")
    assert deliver_file(src, out) and out.read_bytes() == b"one"
    mtime = out.stat().st_mtime_ns
    assert not deliver_file(src, out) and out.stat().st_mtime_ns == mtime
    src.write_bytes(b"two")
    assert deliver_file(src, out) and out.read_bytes() == b"two"
    shutil.rmtree(tmp_path / "out")
    assert os.path.exists(src)
