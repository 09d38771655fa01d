"""Configuration: typed, frozen, strict, with clear errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2p.core.config import PipelineConfig, PredictConfig, SceneConfig
from p2p.core.configfile import load_config, parse_config
from p2p.core.errors import ConfigError


def test_defaults_match_the_paper() -> None:
    cfg = PipelineConfig()
    assert cfg.model.num_downs == 8 and cfg.model.ngf == 64 and cfg.model.n_layers_d == 3
    assert cfg.train.lr == pytest.approx(2e-4) and cfg.train.beta1 == 0.5
    assert cfg.train.lambda_l1 == 100.0
    assert cfg.tiling.chip_size % 2**cfg.model.num_downs == 0


def test_comma_joined_band_files_become_a_list() -> None:
    scene = SceneConfig(source="B2.tif, B3.tif,B4.tif", target="map.tif")
    assert scene.source == ["B2.tif", "B3.tif", "B4.tif"]
    assert scene.target == ["map.tif"]
    assert scene.scene_id == "B2"


def test_unknown_key_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"train\.epohcs"):
        parse_config({"train": {"epohcs": 3}})


def test_negative_epochs_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        parse_config({"train": {"epochs": -1}})


def test_chip_size_must_fit_the_unet_depth() -> None:
    with pytest.raises(ConfigError, match=r"multiple of 2\^model\.num_downs = 256"):
        parse_config({"tiling": {"chip_size": 200, "stride": 200}})


def test_training_scene_needs_a_target() -> None:
    with pytest.raises(ConfigError, match="no target"):
        parse_config({"scenes": [{"source": "a.tif"}]})


def test_overlap_must_leave_a_centre() -> None:
    with pytest.raises(ValueError, match="less than half"):
        PredictConfig(tile_size=128, overlap=64)


def test_configs_are_frozen() -> None:
    cfg = PipelineConfig()
    with pytest.raises(ValueError):
        cfg.train.epochs = 3  # type: ignore[misc]


def test_yaml_load_resolves_paths_and_applies_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        "workspace: ws\n"
        "scenes:\n  - {source: [b2.tif, b3.tif], target: map.tif}\n"
        "model: {num_downs: 5}\n"
        "tiling: {chip_size: 64, stride: 64}\n"
    )
    cfg = load_config(path, ["train.epochs=7", "dataset.val_fraction=0.25"])
    assert cfg.train.epochs == 7 and cfg.dataset.val_fraction == 0.25
    assert cfg.workspace == str(tmp_path / "ws")
    assert cfg.scenes[0].source == [str(tmp_path / "b2.tif"), str(tmp_path / "b3.tif")]


def test_not_yaml_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train: {epochs: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml")
