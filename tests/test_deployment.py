"""deployment.yaml: it passes Prefect's own schema, each entrypoint is a flow whose default
parameters validate, and the batch schedule parses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.cli.deploy._models import PrefectYamlModel
from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule
from prefect.flows import Flow, load_flow_from_entrypoint
from prefect.utilities.schema_tools.validation import validate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "deployment.yaml").read_text())
    PrefectYamlModel.model_validate(data)  # what `prefect deploy` validates it with
    return data


def _deployment(spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(d for d in spec["deployments"] if d["name"] == name)


@pytest.mark.parametrize("name", ["train", "batch-predict"])
def test_entrypoint_is_a_flow_whose_parameters_validate(spec: dict[str, Any], name: str) -> None:
    deployment = _deployment(spec, name)
    flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
    assert isinstance(flow, Flow)
    # what the server checks when the deployment is created (and the UI form before a run)
    schema = flow.parameters.model_dump()
    assert validate(deployment["parameters"], schema, raise_on_error=True) == []
    validated = flow.validate_parameters(deployment["parameters"])
    assert type(validated["config"]).__name__ in ("PipelineConfig", "BatchPredictConfig")
    assert deployment["work_pool"]["name"] == "p2p-process"
    assert deployment["work_pool"]["job_variables"]["env"]["P2P_ALLOWED_ROOTS"]


def test_a_bad_ui_parameter_is_refused_by_the_typed_form(spec: dict[str, Any]) -> None:
    deployment = _deployment(spec, "train")
    flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
    params = {"config": {**deployment["parameters"]["config"], "train": {"epochs": -1}}}
    with pytest.raises(Exception, match="epochs"):
        flow.validate_parameters(params)
    schema = flow.parameters.model_dump()
    assert "PipelineConfig" in schema["definitions"]


def test_batch_predict_runs_on_a_cron_schedule(spec: dict[str, Any]) -> None:
    (schedule,) = _deployment(spec, "batch-predict")["schedules"]
    parsed = _schedule_config_to_deployment_schedule(schedule)["schedule"]
    assert parsed.cron == "0 2 * * *"
    assert str(parsed.timezone) == "UTC"
    assert _deployment(spec, "train")["schedules"] == []
