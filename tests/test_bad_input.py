"""Bad input through the real CLI: one ``error: <where>: <problem>`` line, no traceback,
a non-zero exit and nothing left behind that looks finished.

Every case runs the installed `p2p` as a subprocess (what users run) with stderr a pipe, and
the whole of stderr must be the one line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import rasterio
from affine import Affine

from p2p.model.bundle import META, WEIGHTS
from tests.faultkit import (
    PREDICT_OPTS,
    UTM,
    assert_failed_cleanly,
    assert_one_line_error,
    cli,
    finished_looking,
    leftovers,
    write_scene,
    write_tiny_bundle,
    yaml_config,
)
from tests.rasters import ramp, write_geotiff


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bundle(tmp_path_factory.mktemp("bundle") / "model")


def _predict(model: Path, scene: str | Path, out: Path) -> list[str]:
    return ["predict", "--model", str(model), "--input", str(scene), "--output", str(out)]


def _assert_no_prediction(out: Path) -> None:
    assert leftovers(out.parent) == [], leftovers(out.parent)


# --- predict --------------------------------------------------------------------------------


def test_missing_input_file(tmp_path: Path, model: Path) -> None:
    out = tmp_path / "out" / "pred.tif"
    missing = tmp_path / "nope.tif"
    line = assert_failed_cleanly(cli([*_predict(model, missing, out), *PREDICT_OPTS]), missing)
    assert "not found" in line
    _assert_no_prediction(out)


def test_text_file_named_tif(tmp_path: Path, model: Path) -> None:
    fake = tmp_path / "notes.tif"
    fake.write_text("these are my field notes, not a raster\n")
    out = tmp_path / "out" / "pred.tif"
    line = assert_failed_cleanly(cli([*_predict(model, fake, out), *PREDICT_OPTS]), fake)
    assert "not a raster" in line
    _assert_no_prediction(out)


def test_scenes_without_a_crs(tmp_path: Path, model: Path) -> None:
    """One scene without a CRS is predicted on its own grid; two cannot be placed side by side
    (this raised rasterio's CRSError from the mosaic, after predicting every scene)."""

    def step(i: int) -> Affine:
        return Affine(1.0, 0, 64.0 * i, 0, -1.0, 64.0)

    bare = [
        write_geotiff(tmp_path / f"{n}.tif", ramp(2, 64, 64) + 1, crs=None, transform=step(i))
        for i, n in enumerate(("a", "b"))
    ]
    alone = tmp_path / "alone" / "pred.tif"
    done = cli([*_predict(model, bare[0], alone), *PREDICT_OPTS])
    assert done.returncode == 0, done.stderr
    with rasterio.open(alone) as out, rasterio.open(bare[0]) as src:
        assert out.crs is None and out.transform == src.transform and out.shape == src.shape
    out = tmp_path / "both" / "pred.tif"
    line = assert_failed_cleanly(
        cli([*_predict(model, bare[0], out), "--input", str(bare[1]), *PREDICT_OPTS]), bare[0]
    )
    assert "has no CRS" in line and "gdal_edit.py -a_srs" in line
    _assert_no_prediction(out)
    assert not (out.parent / ".p2p-work" / "predict").exists()  # refused before predicting


def test_truncated_geotiff(tmp_path: Path, model: Path) -> None:
    whole = write_scene(tmp_path / "whole.tif", height=96, width=96)
    cut = tmp_path / "cut.tif"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])  # header intact, the last tiles gone
    out = tmp_path / "out" / "pred.tif"
    line = assert_failed_cleanly(cli([*_predict(model, cut, out), *PREDICT_OPTS]), cut)
    assert "truncated or corrupt" in line
    _assert_no_prediction(out)


def test_band_files_of_different_sizes(tmp_path: Path, model: Path) -> None:
    b1 = write_scene(tmp_path / "B1.tif", bands=1, height=64, width=64)
    b2 = write_scene(tmp_path / "B2.tif", bands=1, height=48, width=64)
    out = tmp_path / "out" / "pred.tif"
    line = assert_failed_cleanly(cli([*_predict(model, f"{b1},{b2}", out), *PREDICT_OPTS]), b2)
    assert "differs from" in line and "64x48" in line
    _assert_no_prediction(out)


@pytest.mark.parametrize("bands", [1, 3])
def test_scene_band_count_differs_from_the_model(tmp_path: Path, model: Path, bands: int) -> None:
    scene = write_scene(tmp_path / "scene.tif", bands=bands)
    out = tmp_path / "out" / "pred.tif"
    line = assert_failed_cleanly(cli([*_predict(model, scene, out), *PREDICT_OPTS]), scene)
    assert f"has {bands} band(s) but the model expects 2" in line
    _assert_no_prediction(out)


def test_tile_size_not_a_multiple_of_the_model(tmp_path: Path, model: Path) -> None:
    scene = write_scene(tmp_path / "scene.tif")
    out = tmp_path / "out" / "pred.tif"
    args = [*_predict(model, scene, out), "--tile-size", "30", "--overlap", "4"]
    line = assert_failed_cleanly(cli(args), "predict.tile_size")
    assert "multiple" in line
    _assert_no_prediction(out)


def test_overlap_too_large_for_the_tile(tmp_path: Path, model: Path) -> None:
    scene = write_scene(tmp_path / "scene.tif")
    out = tmp_path / "out" / "pred.tif"
    args = [*_predict(model, scene, out), "--tile-size", "32", "--overlap", "16"]
    line = assert_failed_cleanly(cli(args), "overlap")
    assert "less than half" in line
    _assert_no_prediction(out)


def test_model_folder_without_model_json(tmp_path: Path, model: Path) -> None:
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / WEIGHTS).write_bytes((model / WEIGHTS).read_bytes())
    scene = write_scene(tmp_path / "scene.tif")
    out = tmp_path / "out" / "pred.tif"
    line = assert_failed_cleanly(cli([*_predict(broken, scene, out), *PREDICT_OPTS]), META)
    assert "not a p2p model bundle" in line
    _assert_no_prediction(out)


def test_bundle_from_a_newer_format_version(tmp_path: Path) -> None:
    newer = write_tiny_bundle(tmp_path / "model")
    meta = json.loads((newer / META).read_text())
    meta["format_version"] += 1
    (newer / META).write_text(json.dumps(meta))
    scene = write_scene(tmp_path / "scene.tif")
    out = tmp_path / "out" / "pred.tif"
    line = assert_failed_cleanly(cli([*_predict(newer, scene, out), *PREDICT_OPTS]), META)
    assert "newer p2p" in line and "upgrade" in line
    _assert_no_prediction(out)


def test_truncated_weights(tmp_path: Path) -> None:
    cut = write_tiny_bundle(tmp_path / "model")
    weights = cut / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:500])
    scene = write_scene(tmp_path / "scene.tif")
    out = tmp_path / "out" / "pred.tif"
    line = assert_failed_cleanly(cli([*_predict(cut, scene, out), *PREDICT_OPTS]), weights)
    assert "truncated or corrupt" in line
    _assert_no_prediction(out)


def test_input_that_names_no_file(tmp_path: Path, model: Path) -> None:
    out = tmp_path / "out" / "pred.tif"
    line = assert_failed_cleanly(cli([*_predict(model, ",", out), *PREDICT_OPTS]), "--input")
    assert "needs at least one source file" in line
    _assert_no_prediction(out)


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [("--tile-size", "abc", "'--tile-size'"), ("--overlap", "-4", "--overlap")],
)
def test_option_of_the_wrong_type_or_range(
    tmp_path: Path, model: Path, option: str, value: str, named: str
) -> None:
    out = tmp_path / "out" / "pred.tif"
    args = [*_predict(model, write_scene(tmp_path / "scene.tif"), out), option, value]
    line = assert_failed_cleanly(cli(args), named)
    assert "integer" in line or "greater than or equal to 0" in line
    _assert_no_prediction(out)


def test_output_folder_is_a_file(tmp_path: Path, model: Path) -> None:
    scene = write_scene(tmp_path / "scene.tif")
    blocker = tmp_path / "results"
    blocker.write_text("a file where the output folder should be")
    out = blocker / "pred.tif"
    assert_failed_cleanly(cli([*_predict(model, scene, out), *PREDICT_OPTS]), blocker)
    assert blocker.read_text().startswith("a file")


# --- evaluate -------------------------------------------------------------------------------


def test_evaluate_with_no_overlap(tmp_path: Path) -> None:
    pred = write_scene(tmp_path / "pred.tif", bands=1)
    far = write_scene(tmp_path / "ref.tif", bands=1, transform=UTM @ Affine.translation(5000, 0))
    error_map = tmp_path / "out" / "error.tif"
    args = ["evaluate", "--prediction", pred, "--target", far, "--error-map", error_map]
    line = assert_failed_cleanly(cli(args), far)
    assert "does not overlap" in line
    assert leftovers(error_map.parent) == []


def test_evaluate_overlapping_but_no_valid_pixel_in_common(tmp_path: Path) -> None:
    pred = write_scene(tmp_path / "pred.tif", bands=1)
    empty = write_scene(tmp_path / "ref.tif", bands=1, fill=0)  # all nodata
    error_map = tmp_path / "out" / "error.tif"
    args = ["evaluate", "--prediction", pred, "--target", empty, "--error-map", error_map]
    line = assert_failed_cleanly(cli(args), pred)
    assert "no valid pixel" in line
    assert leftovers(error_map.parent) == []


def test_evaluate_band_counts_differ(tmp_path: Path) -> None:
    pred = write_scene(tmp_path / "pred.tif", bands=1)
    ref = write_scene(tmp_path / "ref.tif", bands=3)
    line = assert_failed_cleanly(cli(["evaluate", "--prediction", pred, "--target", ref]), ref)
    assert "has 3 band(s)" in line


# --- run: the config file -------------------------------------------------------------------


@pytest.fixture
def config_data(tmp_path: Path) -> dict[str, object]:
    src = write_scene(tmp_path / "src.tif")
    tgt = write_scene(tmp_path / "tgt.tif", bands=1)
    return {
        "workspace": str(tmp_path / "ws"),
        "scenes": [{"source": str(src), "target": str(tgt)}],
        "tiling": {"chip_size": 32, "stride": 32},
        "model": {"num_downs": 2, "ngf": 4, "ndf": 4},
        "train": {"epochs": 1, "device": "cpu"},
    }


def _run_fails(tmp_path: Path, config: Path, *names: str | Path) -> str:
    line = assert_failed_cleanly(cli(["run", config]), *names)
    assert finished_looking(tmp_path / "ws") == []
    return line


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    line = _run_fails(tmp_path, missing, missing)
    assert "cannot read config file" in line


def test_config_file_that_is_not_yaml(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("workspace: [unclosed\n  scenes: {\n")
    line = _run_fails(tmp_path, config, config)
    assert "not valid YAML" in line


@pytest.mark.parametrize(
    "content", [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "workspace: caf\xe9\n".encode("latin-1")]
)
def test_config_file_that_is_binary_or_not_utf8(tmp_path: Path, content: bytes) -> None:
    config = tmp_path / "config.yaml"
    config.write_bytes(content)
    line = _run_fails(tmp_path, config, config)
    assert "not a UTF-8 text file" in line


def test_config_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("- just\n- a list\n")
    line = _run_fails(tmp_path, config, config)
    assert "mapping" in line


def test_unknown_config_key(tmp_path: Path, config_data: dict[str, object]) -> None:
    config_data["train"] = {"epochs": 1, "epoch": 5}  # a typo must not be silently ignored
    config = yaml_config(tmp_path / "config.yaml", config_data)
    line = _run_fails(tmp_path, config, config, "train.epoch")
    assert "unknown field 'epoch'; did you mean epochs" in line


def test_negative_epoch_count(tmp_path: Path, config_data: dict[str, object]) -> None:
    config_data["train"] = {"epochs": -3}
    config = yaml_config(tmp_path / "config.yaml", config_data)
    line = _run_fails(tmp_path, config, "train.epochs")
    assert "greater than or equal to 0" in line


def test_negative_epoch_count_as_override(tmp_path: Path, config_data: dict[str, object]) -> None:
    config = yaml_config(tmp_path / "config.yaml", config_data)
    line = assert_failed_cleanly(cli(["run", config, "--set", "train.epochs=-1"]), "train.epochs")
    assert "greater than or equal to 0" in line


def test_chip_size_not_a_multiple_of_2_to_the_num_downs(
    tmp_path: Path, config_data: dict[str, object]
) -> None:
    config_data["tiling"] = {"chip_size": 30, "stride": 30}
    config = yaml_config(tmp_path / "config.yaml", config_data)
    line = _run_fails(tmp_path, config, config, "tiling.chip_size")
    assert "multiple of 2^model.num_downs = 4" in line


def test_u_net_too_shallow(tmp_path: Path, config_data: dict[str, object]) -> None:
    config_data["model"] = {"num_downs": 1, "ngf": 4, "ndf": 4}
    config = yaml_config(tmp_path / "config.yaml", config_data)
    line = _run_fails(tmp_path, config, config, "model.num_downs")
    assert "greater than or equal to 2" in line


def test_training_scene_without_target(tmp_path: Path, config_data: dict[str, object]) -> None:
    scenes = config_data["scenes"]
    assert isinstance(scenes, list)
    config_data["scenes"] = [{"source": scenes[0]["source"]}]
    config = yaml_config(tmp_path / "config.yaml", config_data)
    line = _run_fails(tmp_path, config, config, "scenes[0]")
    assert "no target" in line


def test_unknown_until_stage(tmp_path: Path, config_data: dict[str, object]) -> None:
    config = yaml_config(tmp_path / "config.yaml", config_data)
    line = assert_failed_cleanly(cli(["run", config, "--until", "mosaic"]), "--until")
    assert "tile" in line


def test_source_and_target_with_no_overlap(tmp_path: Path, config_data: dict[str, object]) -> None:
    far = write_scene(tmp_path / "far.tif", bands=1, transform=UTM @ Affine.translation(500, 0))
    scenes = config_data["scenes"]
    assert isinstance(scenes, list)
    scenes[0]["target"] = str(far)
    config = yaml_config(tmp_path / "config.yaml", config_data)
    line = _run_fails(tmp_path, config, far)
    assert "does not overlap the source grid" in line


def test_scene_smaller_than_one_chip(tmp_path: Path, config_data: dict[str, object]) -> None:
    config_data["tiling"] = {"chip_size": 128, "stride": 128}
    config = yaml_config(tmp_path / "config.yaml", config_data)
    line = _run_fails(tmp_path, config, tmp_path / "src.tif")
    assert "chip_size 128 is larger than the scene (64x64 px)" in line


@pytest.mark.slow
def test_all_nodata_scene_through_the_flow(tmp_path: Path, config_data: dict[str, object]) -> None:
    # Found only while tiling, inside a Prefect task: a real process, so that Prefect's own
    # console logging (tracebacks of the failed task and flow) is what the user would see.
    empty = write_scene(tmp_path / "empty.tif", fill=0)  # nodata 0 everywhere
    scenes = config_data["scenes"]
    assert isinstance(scenes, list)
    scenes[0]["source"] = str(empty)
    config = yaml_config(tmp_path / "config.yaml", config_data)
    done = subprocess.run(
        [sys.executable, "-m", "p2p", "run", str(config)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    line = assert_one_line_error(done.returncode, done.stderr, empty)
    assert "no valid pixel" in line
    assert finished_looking(tmp_path / "ws") == []
