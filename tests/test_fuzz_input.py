"""Fuzzed bad input: every config field and every `p2p predict` option, given wrong types,
empty values, out-of-range numbers and undecodable bytes, is either taken or refused in one
``error:`` line — never a traceback.

Hypothesis needs hundreds of cases, so these call the CLI's own entry (`p2p.app.cli.main`, what
the console script runs) in this process; the subprocess tests in test_bad_input.py hold the
whole-process contract (exit code, the one stderr line).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from p2p.app.cli import main
from p2p.core.config import DaskConfig, PipelineConfig
from p2p.core.configfile import load_config
from p2p.core.errors import ConfigError, TrainingDiverged
from p2p.model.bundle import load_bundle
from p2p.model.networks import PatchGANDiscriminator, UNetGenerator
from p2p.stages import dataset, tile, train
from tests.faultkit import write_scene, write_tiny_bundle

SECTIONS = ("tiling", "dataset", "model", "train", "predict", "dask")


def _section_fields() -> list[tuple[str, str]]:
    fields = []
    for section in SECTIONS:
        model = PipelineConfig.model_fields[section].annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        fields += [(section, name) for name in model.model_fields]
    return fields


FIELDS = _section_fields()
BAD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.sampled_from([0, -1, 1, 2, 3, 10**9, 2**31, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["", " ", ",", "nan", "inf", "-1", "1e400", "cuda:99", "[]", "{}"]),
    st.lists(st.integers(-5, 5), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("fuzz")
    source = write_scene(folder / "src.tif")
    target = write_scene(folder / "tgt.tif", bands=1)
    return {
        "folder": folder,
        "model": write_tiny_bundle(folder / "model"),
        "source": source,
        "config": {
            "workspace": str(folder / "ws"),
            "scenes": [{"source": str(source), "target": str(target)}],
            "tiling": {"chip_size": 32, "stride": 32},
            "model": {"num_downs": 2, "ngf": 4, "ndf": 4},
        },
    }


def _networks_build(config: PipelineConfig) -> None:
    """What the train stage builds from a config the config accepted (on the meta device:
    shapes only, so a huge but valid width costs nothing here)."""
    m = config.model
    with torch.device("meta"):
        UNetGenerator(3, 1, m.num_downs, m.ngf, m.norm, m.dropout)
        PatchGANDiscriminator(4, m.ndf, m.n_layers_d, m.norm)
    if config.tiling.chip_size % 2**m.num_downs:
        raise AssertionError("a chip size the U-Net cannot take was accepted")


@FUZZ
@given(field=st.sampled_from(FIELDS), value=BAD_VALUES)
def test_any_config_field_value_is_taken_or_refused_in_one_line(
    scenes: dict[str, Any], tmp_path: Path, field: tuple[str, str], value: Any
) -> None:
    section, name = field
    data = {**scenes["config"], section: {**scenes["config"].get(section, {}), name: value}}
    path = scenes["folder"] / "fuzz.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        config = load_config(path)
    except ConfigError as exc:
        assert "\n" not in str(exc) and f"{section}" in str(exc), str(exc)
        return
    _networks_build(config)


# Settings the training loop reads, over their accepted ranges (sizes kept small: the cost of
# a huge but valid width is the meta-device check's business, not this one's).
TRAIN_SETTINGS = st.fixed_dictionaries(
    {
        "lr": st.floats(min_value=1e-6, max_value=1.0),
        "beta1": st.floats(min_value=0.0, max_value=0.99),
        "lambda_l1": st.floats(min_value=0.0, max_value=1e6),
        "ema_epochs": st.sampled_from([0.0, 0.01, 1.0, 1000.0]),
        "warmup_epochs": st.integers(0, 2),
        "bn_stats": st.sampled_from(["recompute", "running"]),
        "keep": st.sampled_from(["best", "last"]),
        "augment": st.booleans(),
        "precision": st.sampled_from(["fp32", "bf16"]),
        "seed": st.integers(0, 2**32 - 1),
    }
)
MODEL_SETTINGS = st.fixed_dictionaries(
    {
        "norm": st.sampled_from(["batch", "instance"]),
        "dropout": st.floats(min_value=0.0, max_value=0.9),
        "n_layers_d": st.integers(1, 2),
        "linear_anchor": st.booleans(),
    }
)


@pytest.fixture(scope="module")
def chips(scenes: dict[str, Any]) -> Any:
    """The fuzz scenes tiled and split once: four 32 px chips for the train stage."""
    config = PipelineConfig.model_validate(scenes["config"])
    workspace = scenes["folder"] / "stage-ws"
    tiles = tile.run(workspace, config.scenes[0], config.tiling, DaskConfig(n_workers=1))
    return workspace, dataset.run(workspace, [tiles], config.dataset, config.tiling)


@pytest.mark.slow  # ~25 s on 2 busy cores (tiling once, then five one-step train stages)
@settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(train_settings=TRAIN_SETTINGS, model_settings=MODEL_SETTINGS)
def test_accepted_training_settings_run_the_real_train_stage_or_stop_in_one_line(
    scenes: dict[str, Any],
    chips: Any,
    train_settings: dict[str, Any],
    model_settings: dict[str, Any],
) -> None:
    """A sample of accepted configs runs the real train stage (a few chips, one step): it
    bundles finite weights with strict-JSON metrics, or stops in one line when the loss
    diverged, leaving no bundle and no manifest."""
    config = PipelineConfig.model_validate(
        {
            **scenes["config"],
            "model": {**scenes["config"]["model"], **model_settings},
            "train": {"epochs": 1, "batch_size": 4, "device": "cpu", **train_settings},
        }
    )
    workspace, split = chips
    try:
        record = train.run(workspace, split, config.model, config.train)
    except TrainingDiverged as exc:
        assert "\n" not in str(exc) and "not finite" in str(exc)
        folder = Path(workspace) / "train" / train.key_parts(split, config.model, config.train).key
        assert not (folder / "manifest.json").exists() and not (folder / "model").exists()
        return
    bundle = load_bundle(record.summary["model"], "cpu")
    weights = bundle.generator.state_dict().values()
    assert all(torch.isfinite(w).all() for w in weights if w.is_floating_point())
    for line in (Path(record.path) / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=_refuse)
    json.loads((Path(record.path) / "manifest.json").read_text(), parse_constant=_refuse)


def _refuse(name: str) -> Any:
    raise AssertionError(f"not strict JSON: {name}")


@FUZZ
@given(junk=st.binary(min_size=1, max_size=40), at=st.integers(min_value=0, max_value=400))
def test_config_bytes_anywhere_are_taken_or_refused_in_one_line(
    scenes: dict[str, Any], junk: bytes, at: int
) -> None:
    text = yaml.safe_dump(scenes["config"]).encode()
    path = scenes["folder"] / "bytes.yaml"
    path.write_bytes(text[:at] + junk + text[at:])
    try:
        config = load_config(path)
    except ConfigError as exc:
        assert "\n" not in str(exc), str(exc)
        return
    _networks_build(config)


OPTION_VALUES = st.one_of(
    st.integers(min_value=-(10**6), max_value=10**6).map(str),
    st.sampled_from(["0", "-1", "1", "2", "4", "8", "16", "32", "10000000000", "99999999999999"]),
    st.sampled_from(["", " ", ",", "abc", "nan", "inf", "-inf", "1e400", "cpu", "cuda", "tpu"]),
    st.sampled_from(["cosine", "linear", "none", "gtiff", "cog", "auto", "jpeg"]),
    st.text(max_size=8).filter(lambda s: "\x00" not in s),
)
OPTIONS = [
    "--tile-size",
    "--overlap",
    "--batch-size",
    "--nodata",
    "--device",
    "--blend",
    "--format",
    "--input",
    "--model",
]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(option=st.sampled_from(OPTIONS), value=OPTION_VALUES)
def test_any_predict_option_value_is_taken_or_refused_in_one_line(
    scenes: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    option: str,
    value: str,
) -> None:
    out = scenes["folder"] / "out" / "pred.tif"
    out.unlink(missing_ok=True)
    opts = {
        "--model": str(scenes["model"]),
        "--input": str(scenes["source"]),
        "--tile-size": "32",
        "--overlap": "4",
        "--format": "gtiff",
        "--device": "cpu",
        option: value,
    }
    argv = ["p2p", "predict", "--output", str(out), *(x for kv in opts.items() for x in kv)]
    monkeypatch.setattr(sys, "argv", argv)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    code = exit_info.value.code
    if code == 0:
        assert out.is_file() and err == "", err
        return
    assert code in (1, 2) and err.endswith("\n") and err.count("\n") == 1, (code, err)
    assert err.startswith("error: ") and not out.exists()
