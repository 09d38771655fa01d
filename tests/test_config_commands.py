"""`p2p config schema`, `p2p config init [--demo]` and `--help` through the installed CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from p2p.core.config import PipelineConfig
from p2p.core.configfile import parse_config
from tests.faultkit import assert_failed_cleanly, cli


def test_schema_is_the_configs_json_schema() -> None:
    done = cli(["config", "schema"])
    assert done.returncode == 0, done.stderr
    schema = json.loads(done.stdout)
    assert schema == json.loads(json.dumps(PipelineConfig.model_json_schema()))
    assert "chip_size" in schema["$defs"]["TilingConfig"]["properties"]


def test_init_writes_every_default_commented(tmp_path: Path) -> None:
    done = cli(["config", "init"])
    assert done.returncode == 0, done.stderr
    assert parse_config(yaml.safe_load(done.stdout)) == PipelineConfig()
    for field in PipelineConfig.model_fields["train"].annotation.model_fields.values():  # type: ignore[union-attr]
        assert (field.description or "")[:30] in done.stdout.replace("\n  # ", " ")


def test_init_demo_writes_scenes_a_plan_accepts(tmp_path: Path) -> None:
    config = tmp_path / "cfg" / "config.yaml"
    done = cli(["config", "init", config, "--demo"])
    assert done.returncode == 0, done.stderr
    plan = cli(["plan", config, "--json"])
    assert plan.returncode == 0, plan.stderr
    stages = json.loads(plan.stdout.splitlines()[-1])["stages"]
    assert [s["status"] for s in stages.values()] == ["run"] * 6
    assert all(s["path"].startswith(str(tmp_path / "cfg" / "work")) for s in stages.values())
    again = cli(["config", "init", config])
    line = assert_failed_cleanly(again, config)
    assert line.endswith("exists; choose another name, or --force to replace it")


@pytest.mark.parametrize("command", ["run", "predict", "workspace prune"])
def test_help_shows_what_to_type_and_an_example(command: str) -> None:
    done = cli([*command.split(), "--help"])
    assert done.returncode == 0
    assert "Example:" in done.stdout
    assert (
        "<bool>" not in done.stdout and "<list[" not in done.stdout and "<str>" not in done.stdout
    )
