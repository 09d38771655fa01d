"""Errors that say what to do: the whole stderr of the installed `p2p` for the mistakes a new
user makes (a misspelt field, in the file or in ``--set``; a chip side the U-Net cannot take; a
target of another place; a scene with more bands than the model takes)."""

from __future__ import annotations

from pathlib import Path

import pytest
from affine import Affine

from tests.faultkit import PREDICT_OPTS, UTM, cli, write_scene, write_tiny_bundle, yaml_config


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


def _stderr(args: list[str | Path], code: int = 1) -> str:
    done = cli(["plan", *args]) if args[0] != "predict" else cli(args)
    assert done.returncode == code, done.stderr
    return done.stderr


def test_misspelt_field_in_the_file_offers_close_matches(
    tmp_path: Path, config_data: dict[str, object]
) -> None:
    config_data["train"] = {"epoch": 5}
    config = yaml_config(tmp_path / "config.yaml", config_data)
    assert _stderr([config]) == (
        f"error: {config}: train.epoch: unknown field 'epoch'; did you mean epochs or ema_epochs?\n"
    )


def test_misspelt_field_in_set_blames_the_option(
    tmp_path: Path, config_data: dict[str, object]
) -> None:
    config = yaml_config(tmp_path / "config.yaml", config_data)
    assert _stderr([config, "--set", "tiling.chip_sise=64"]) == (
        "error: --set tiling.chip_sise=64: tiling.chip_sise: unknown field 'chip_sise'; "
        "did you mean chip_size?\n"
    )


def test_a_field_nothing_resembles_lists_the_fields(
    tmp_path: Path, config_data: dict[str, object]
) -> None:
    config = yaml_config(tmp_path / "config.yaml", config_data)
    assert _stderr([config, "--set", "dask.zzz=1"]) == (
        "error: --set dask.zzz=1: dask.zzz: unknown field 'zzz'; the fields here are "
        "address, n_workers, threads_per_worker\n"
    )


def test_model_check_has_no_pydantic_prefix_and_blames_the_option(
    tmp_path: Path, config_data: dict[str, object]
) -> None:
    config = yaml_config(tmp_path / "config.yaml", config_data)
    assert _stderr([config, "--set", "train.nodes=2"]) == (
        "error: --set train.nodes=2: train: nodes > 1 needs a rendezvous endpoint "
        "(train.rendezvous: host:port)\n"
    )


def test_chip_size_offers_the_nearest_sides_and_a_depth(
    tmp_path: Path, config_data: dict[str, object]
) -> None:
    config_data["tiling"] = {"chip_size": 48, "stride": 48}
    config_data["model"] = {"num_downs": 5}
    config = yaml_config(tmp_path / "config.yaml", config_data)
    assert _stderr([config]) == (
        f"error: {config}: tiling.chip_size: 48 must be a multiple of 2^model.num_downs = 32; "
        "use 32 or 64, or set model.num_downs: 4 (2^4 = 16)\n"
    )


def test_no_overlap_prints_both_extents_in_full(
    tmp_path: Path, config_data: dict[str, object]
) -> None:
    far = write_scene(tmp_path / "far.tif", bands=1, transform=UTM @ Affine.translation(500, 0))
    scenes = config_data["scenes"]
    assert isinstance(scenes, list)
    scenes[0]["target"] = str(far)
    config = yaml_config(tmp_path / "config.yaml", config_data)
    done = cli(["run", config])
    assert done.returncode == 1
    assert done.stderr == (
        f"error: {far}: does not overlap the source grid (EPSG:32633, 64x64 px of 10x10, "
        "extent (500000, 999360, 500640, 1000000)); its own grid is EPSG:32633, 64x64 px of "
        "10x10, extent (505000, 999360, 505640, 1000000). Likely the pair is not of one place "
        "(check the scene's source and target paths) or a wrong geotransform on one of the "
        "files (compare `gdalinfo` of both)\n"
    )


def test_band_count_points_at_bands_which_then_works(tmp_path: Path) -> None:
    model = write_tiny_bundle(tmp_path / "model")
    scene = write_scene(tmp_path / "scene.tif", bands=3)
    out = tmp_path / "out" / "pred.tif"
    args: list[str | Path] = [
        "predict", "--model", model, "--input", scene, "--output", out, *PREDICT_OPTS
    ]  # fmt: skip
    assert _stderr(args) == (
        f"error: {scene}: has 3 band(s) but the model expects 2 (b1, b2); choose 2 of its "
        "bands with `p2p predict --bands 1,2` (source_bands: [1, 2] in a config scene)\n"
    )
    assert _stderr([*args, "--bands", "1,x"], code=1) == (
        "error: --bands: '1,x' is not a list of band numbers; give e.g. --bands 1,2,3\n"
    )
    done = cli([*args, "--bands", "2,3"])
    assert done.returncode == 0, done.stderr
    assert out.is_file()
