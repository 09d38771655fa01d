"""deployment.yaml: it passes Prefect's own schema, each entrypoint is a flow whose default
parameters validate, a server takes what the YAML config takes, and the batch schedule
parses."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.cli.deploy._models import PrefectYamlModel
from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule
from prefect.client.orchestration import get_client
from prefect.exceptions import PrefectHTTPStatusError
from prefect.flows import Flow, load_flow_from_entrypoint
from prefect.settings import PREFECT_API_URL
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


def test_a_server_accepts_a_scene_side_as_a_string_or_a_list(
    spec: dict[str, Any], prefect_harness: None
) -> None:
    # The YAML config takes `source: a.tif`; a flow run created through the API (or the UI
    # form) is checked by the server against the deployment's parameter schema, which must
    # take the same values.
    deployment = _deployment(spec, "train")
    flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
    deployment_id = flow.to_deployment(name="schema-check").apply()
    scene = {"source": "/srv/p2p/a_B2.tif,/srv/p2p/a_B3.tif", "target": "/srv/p2p/a_B4.tif"}
    listed = {"source": ["/srv/p2p/b.tif"], "target": ["/srv/p2p/b_map.tif"]}
    config = {**deployment["parameters"]["config"], "scenes": [scene, listed]}

    async def create(parameters: dict[str, Any]) -> str:
        async with get_client() as client:
            try:
                await client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
            except PrefectHTTPStatusError as exc:
                return str(exc.response.json()["detail"])
            return "accepted"

    assert asyncio.run(create({"config": config})) == "accepted"
    refused = asyncio.run(create({"config": {**config, "train": {"epochs": -1}}}))
    assert "config.train.epochs" in refused  # the server does check the schema
    validated = flow.validate_parameters({"config": config})["config"]
    assert [s.source for s in validated.scenes] == [
        ["/srv/p2p/a_B2.tif", "/srv/p2p/a_B3.tif"],
        ["/srv/p2p/b.tif"],
    ]
    assert validated.scenes[0].target == ["/srv/p2p/a_B4.tif"]


def test_a_deployment_run_without_allowed_roots_refuses_to_start(
    spec: dict[str, Any], prefect_harness: None, tmp_path: Path
) -> None:
    # A flow run created from a deployment, executed the way a process worker executes it
    # (`python -m prefect.engine` with the run's id), with P2P_ALLOWED_ROOTS unset.
    deployment = _deployment(spec, "batch-predict")
    flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
    deployment_id = flow.to_deployment(name="roots-check").apply()
    config = {
        "workspace": str(tmp_path / "ws"),
        "model": str(tmp_path / "model"),
        "scenes": ["/etc/hostname"],
        "output": str(tmp_path / "mosaic.tif"),
    }

    async def run() -> Any:
        async with get_client() as client:
            run = await client.create_flow_run_from_deployment(
                deployment_id, parameters={"config": config}
            )
            env = {k: v for k, v in os.environ.items() if k != "P2P_ALLOWED_ROOTS"}
            env |= {"PREFECT__FLOW_RUN_ID": str(run.id), "PREFECT_API_URL": PREFECT_API_URL.value()}
            cmd = [sys.executable, "-m", "prefect.engine"]
            subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, timeout=120, check=False)
            return (await client.read_flow_run(run.id)).state

    state = asyncio.run(run())
    assert state.is_failed()
    assert "PathNotAllowedError: P2P_ALLOWED_ROOTS: unset" in state.message
    assert not (tmp_path / "ws").exists()
