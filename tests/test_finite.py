"""Nothing non-finite gets in or out: settings that are infinite, NaN or absurdly large are
refused in one line naming the field; a training run whose loss or weights go NaN stops in one
line (epoch, step, which loss) before its epoch's checkpoint and resumes from the one before;
every JSON file a real run writes parses with a strict parser."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from synthetic import SyntheticPairs

from p2p.core.config import MosaicConfig, PipelineConfig, TrainConfig
from p2p.core.configfile import load_config
from p2p.core.errors import ConfigError, TrainingDiverged
from p2p.model.training import train
from p2p.stages.pipeline import TRAINING, in_process, run_steps
from tests.fault_pipeline import MODEL, PREDICT, TILING, TRAIN, write_data
from tests.test_training import TINY


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"not strict JSON: {name}")


def strict_json(text: str) -> Any:
    """`json.loads` that refuses NaN, Infinity and -Infinity."""
    return json.loads(text, parse_constant=_refuse_constant)


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("train.lr", ".inf", "finite number"),
        ("train.lambda_l1", ".inf", "finite number"),
        ("train.ema_epochs", ".inf", "finite number"),
        ("train.beta1", ".nan", "finite number"),
        ("tiling.min_valid_fraction", ".nan", "finite number"),
        ("dask.n_workers", "1000000000000", "less than or equal to 1024"),
        ("tiling.block_chips", "1.0e+9", "less than or equal to 256"),
        ("train.devices", "1000000000", "from 1 to 256"),
        ("train.epochs", "1000000000", "less than or equal to 100000"),
        ("train.batch_size", "1.0e+9", "less than or equal to 4096"),
    ],
)
def test_non_finite_and_absurd_settings_are_refused_naming_the_field(
    tmp_path: Path, field: str, value: str, problem: str
) -> None:
    section, name = field.split(".")
    config = tmp_path / "p2p.yaml"
    scene = {"source": "a.tif", "target": "b.tif"}
    config.write_text(f"scenes: [{json.dumps(scene)}]\n{section}:\n  {name}: {value}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(config)
    assert "\n" not in str(refused.value)
    assert str(refused.value).startswith(f"{config}: {field}: ") and problem in str(refused.value)


def test_a_non_finite_mosaic_resolution_is_refused() -> None:
    with pytest.raises(ValidationError, match="finite number"):
        MosaicConfig(resolution=float("inf"))


class PoisonedPairs(SyntheticPairs):
    """Synthetic chips whose first source chip holds a NaN from epoch `at` on (a corrupt
    chip that only a later augmentation or shard reaches)."""

    def __init__(self, at: int) -> None:
        super().__init__(8, size=16, in_bands=2, out_bands=1, seed=1)
        self.at, self.epoch = at, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y, valid = super().__getitem__(index)
        if self.epoch >= self.at and index == 0:
            x = x.clone()
            x[0, 3, 3] = float("nan")
        return x, y, valid


def test_a_run_whose_loss_goes_nan_stops_in_one_line_and_resumes_from_before(
    tmp_path: Path,
) -> None:
    model = TINY.model_copy(update={"num_downs": 2, "n_layers_d": 1})
    cfg = TrainConfig(epochs=3, batch_size=4, device="cpu", preview_chips=0)
    val = SyntheticPairs(2, size=16, in_bands=2, out_bands=1, seed=2)
    stats = SyntheticPairs.stats(1)
    with pytest.raises(TrainingDiverged) as stopped:
        train(PoisonedPairs(at=2), val, model, cfg, tmp_path, stats)
    line = str(stopped.value)
    assert "\n" not in line
    assert line.startswith("train: epoch 2, step 1: loss_d, loss_g, loss_g_gan, loss_g_l1 not")
    # epoch 1's checkpoint and metrics line, nothing of epoch 2 (no NaN in any file)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["epoch_0001.safetensors"]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [strict_json(x)["epoch"] for x in lines] == [1]
    # the data fixed, the rerun resumes after epoch 1 and finishes
    done = train(PoisonedPairs(at=99), val, model, cfg, tmp_path, stats)
    assert done.epochs_done == 3
    weights = done.load_generator().state_dict().values()
    assert all(torch.isfinite(w).all() for w in weights if w.is_floating_point())


@pytest.mark.slow
def test_every_json_file_of_a_real_run_is_strict_json(tmp_path: Path) -> None:
    data = write_data(tmp_path / "data")
    config = PipelineConfig.model_validate(
        {
            "workspace": str(tmp_path / "ws"),
            "scenes": [{"source": [data["src"]], "target": [data["tgt"]], "nodata": 0}],
            "tiling": TILING,
            "model": MODEL,
            "train": TRAIN,
            "predict": PREDICT,
        }
    )
    run_steps(TRAINING, config, config.workspace, in_process())
    written = [
        p
        for p in (tmp_path / "ws").rglob("*")
        if p.is_file() and p.suffix in (".json", ".jsonl", ".done")
    ]
    names = {p.name for p in written}
    assert {"manifest.json", "metrics.jsonl", "model.json", "stats.json"} <= names
    for path in written:
        for line in (
            path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]
        ):
            strict_json(line)
