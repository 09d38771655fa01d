"""The Prefect flows under a temporary server: caching, reruns, Dask fan-out, the demo."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import yaml
from distributed import LocalCluster
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.settings import PREFECT_API_URL

from flows.batch_predict import batch_predict
from flows.demo import demo_flow
from flows.train_pipeline import train_pipeline
from p2p.core.config import BatchPredictConfig, DaskConfig, PipelineConfig
from p2p.core.errors import PathNotAllowedError
from p2p.demo import DemoScenes, demo_config, write_demo_scenes
from p2p.stages.pipeline import UNTIL as STAGES
from p2p.stages.record import RunRecord
from tests.rasters import assert_same_raster

pytestmark = pytest.mark.usefixtures("prefect_harness")


def artifact_mtimes(workspace: str | Path) -> dict[str, int]:
    """mtime of every artifact file (Prefect's own result store excluded)."""
    root = Path(workspace)
    return {
        str(p.relative_to(root)): p.stat().st_mtime_ns
        for p in root.rglob("*")
        if p.is_file() and ".prefect" not in p.parts
    }


def task_states(state: Any) -> dict[str, str]:
    """Task run name → state name of a finished flow run."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    return {r.name: r.state.name for r in runs if r.state is not None}


@pytest.fixture(scope="module")
def demo(demo_run: dict[str, Any]) -> dict[str, Any]:
    """The session's quick demo run (conftest.py)."""
    return demo_run


@pytest.fixture(scope="module")
def data(demo: dict[str, Any]) -> DemoScenes:
    return write_demo_scenes(Path(demo["workspace"]) / "data", scene_size=96)


@pytest.fixture(scope="module")
def trained(demo: dict[str, Any], data: DemoScenes) -> tuple[PipelineConfig, dict[str, Any]]:
    """The demo's training config and the training part of its record."""
    config = demo_config(demo["workspace"], data.train, quick=True)
    train_stages = [n for n in demo["stages"] if n.split(":")[0] in STAGES]
    return config, {**demo, "stages": {n: demo["stages"][n] for n in train_stages}}


def test_full_pipeline_record(trained: tuple[PipelineConfig, dict[str, Any]]) -> None:
    _, record = trained
    assert list(record["stages"]) == [
        "tile:train_1",
        "tile:train_2",
        "tile:train_3",
        "dataset",
        "train",
        "evaluate",
    ]
    for name, stage in record["stages"].items():
        assert not stage["cached"], name
        assert Path(stage["path"], "manifest.json").is_file()
        assert Path(stage["path"]).parent.name == name.split(":")[0]
    assert Path(record["model"], "model.json").is_file()
    assert record["model"].startswith(record["stages"]["train"]["path"])
    bands = record["metrics"]["bands"]
    assert len(bands) == 3 and all(0 < b["mae"] < 255 for b in bands)
    manifests = {
        n: json.loads(Path(record["stages"][n]["path"], "manifest.json").read_text())
        for n in ("dataset", "evaluate")
    }
    metrics, dataset = manifests["evaluate"]["summary"]["metrics"], manifests["dataset"]
    assert metrics["baselines"] == dataset["summary"]["baselines"]
    assert set(metrics["baselines"]) == {"linear", "mean"}
    linear = metrics["baselines"]["linear"]["mae"]
    assert metrics["skill"] == pytest.approx(metrics["overall"]["mae"] / linear)
    # the validation blocks as `p2p predict` translates them, in the record and the UI report
    seamless = record["metrics"]["validation"]["seamless"]
    assert seamless["pixels"] > 0 and set(seamless["scenes"]) <= {"train_1", "train_2", "train_3"}
    assert 0 < seamless["overall"]["mae"] < 255 and seamless["baselines"]["linear"]["mae"] > 0
    with get_client(sync_client=True) as client:
        reports = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["p2p-evaluate-report"]))
        )
    assert any(
        "Validation blocks through the prediction engine" in str(a.data)
        and f"{seamless['pixels']} pixels" in str(a.data)
        for a in reports
    )


def test_rerun_is_all_cached_and_rewrites_nothing(
    trained: tuple[PipelineConfig, dict[str, Any]],
) -> None:
    config, first = trained
    before = artifact_mtimes(config.workspace)
    second = train_pipeline(config)
    assert RunRecord.model_validate(second).pipeline == "train"  # the one record schema
    assert {n: s["cached"] for n, s in second["stages"].items()} == {
        n: True for n in first["stages"]
    }
    assert {n: s["key"] for n, s in second["stages"].items()} == {
        n: s["key"] for n, s in first["stages"].items()
    }
    state = train_pipeline(config, return_state=True)
    third = state.result()
    assert all(s["cached"] for s in third["stages"].values())
    states = task_states(state)
    assert states.pop("check-train") == "Completed"  # the scenes are checked on every run
    assert set(states.values()) == {"Cached"}  # every stage: what the UI shows
    assert artifact_mtimes(config.workspace) == before


def test_more_epochs_reruns_train_and_evaluate_only(
    trained: tuple[PipelineConfig, dict[str, Any]],
) -> None:
    config, first = trained
    longer = config.model_copy(update={"train": config.train.model_copy(update={"epochs": 2})})
    record = train_pipeline(longer)
    cached = {n: s["cached"] for n, s in record["stages"].items()}
    assert cached == {**{n: True for n in first["stages"]}, "train": False, "evaluate": False}
    assert record["stages"]["train"]["key"] != first["stages"]["train"]["key"]
    until = train_pipeline(longer, until="dataset")
    assert list(until["stages"])[-1] == "dataset" and until["model"] is None


def test_batch_predict_on_a_local_cluster(
    trained: tuple[PipelineConfig, dict[str, Any]], data: DemoScenes, tmp_path: Path
) -> None:
    config, record = trained
    pattern = str(Path(data.union_source).parent / "heldout_[ab]_image.tif")
    batch = BatchPredictConfig(
        workspace=str(tmp_path / "ws"),  # the demo's workspace holds these predictions
        model=record["model"],
        scenes=[pattern],
        output=str(tmp_path / "out" / "mosaic.tif"),
        predict=config.predict.model_copy(update={"uncertainty": True}),
    )
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster:
        dask = DaskConfig(address=cluster.scheduler_address)
        result = batch_predict(batch.model_copy(update={"dask": dask}))
        ran_on_cluster = set(cluster.scheduler.task_prefixes)
    assert "predict_scene" in ran_on_cluster  # the Prefect task ran on the Dask workers
    assert RunRecord.model_validate(result).written is True  # the one record schema
    assert result["scenes"] == ["heldout_a_image", "heldout_b_image"]
    assert not any(s["cached"] for s in result["stages"].values())
    with rasterio.open(result["output"]) as out, rasterio.open(data.union_target) as ref:
        assert (out.crs, out.transform, out.shape) == (ref.crs, ref.transform, ref.shape)
        assert out.dtypes[0] == "uint8" and np.ptp(out.read(1)) > 0
    # predict.uncertainty: the spread is mosaicked onto the same grid and delivered beside it
    assert result["uncertainty"] == str(tmp_path / "out" / "mosaic.uncertainty.tif")
    with rasterio.open(result["uncertainty"]) as spread, rasterio.open(result["output"]) as out:
        assert (spread.crs, spread.transform, spread.shape) == (out.crs, out.transform, out.shape)
        assert spread.dtypes[0] == "float32" and spread.tags()["P2P_LAYER"] == "uncertainty"

    # a new scene in the batch: only it is predicted, the mosaic is rebuilt
    more = batch.model_copy(update={"scenes": [pattern, data.train[0].source[0]]})
    again = batch_predict(more)
    cached = {n: s["cached"] for n, s in again["stages"].items()}
    assert cached == {
        "predict:heldout_a_image": True,
        "predict:heldout_b_image": True,
        "predict:train_1_image": False,
        "mosaic": False,
    }


def test_paths_outside_the_allowed_roots_are_refused(
    trained: tuple[PipelineConfig, dict[str, Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config, _ = trained
    monkeypatch.setenv("P2P_ALLOWED_ROOTS", str(tmp_path))
    with pytest.raises(PathNotAllowedError, match="outside the allowed roots"):
        train_pipeline(config)


def test_bad_input_fails_once_without_retries(data: DemoScenes, tmp_path: Path) -> None:
    missing = data.train[0].model_copy(update={"source": [str(tmp_path / "missing.tif")]})
    config = demo_config(tmp_path / "ws", [missing], quick=True)
    state = train_pipeline(config, return_state=True)
    assert state.is_failed()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    # the pipeline's check failed, once (bad input is never retried), before any stage ran
    assert [(r.name, r.run_count) for r in runs] == [("check-train", 1)]


def test_demo_reports_and_reruns_cached(demo: dict[str, Any]) -> None:
    RunRecord.model_validate(demo)  # the one record schema (docs/record.schema.json)
    ws = Path(demo["workspace"])
    assert Path(demo["report"]) == ws / "report.png" and (ws / "report.md").is_file()
    assert "| **overall** |" in (ws / "report.md").read_text()
    assert list(demo["stages"])[-4:] == [
        "predict:heldout_a_image",
        "predict:heldout_b_image",
        "mosaic",
        "report",
    ]
    assert demo["metrics"]["bands"][0]["count"] > 0
    assert not any(s["cached"] for s in demo["stages"].values())
    again = demo_flow(str(ws), scene_size=96, quick=True)
    assert all(s["cached"] for s in again["stages"].values())
    assert again["metrics"] == demo["metrics"]


def _p2p_run(config: PipelineConfig, folder: Path, *extra: str) -> subprocess.Popen[str]:
    """Start `p2p run` in its own process group, against the test's Prefect server."""
    path = folder / f"config-{len(list(folder.glob('config-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "p2p"), "run", str(path), "--json", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


@pytest.mark.slow
def test_killed_run_resumes_training_from_its_checkpoint(
    trained: tuple[PipelineConfig, dict[str, Any]], tmp_path: Path
) -> None:
    config, _ = trained
    longer = config.model_copy(update={"train": config.train.model_copy(update={"epochs": 6})})
    proc = _p2p_run(longer, tmp_path)
    train_root = Path(config.workspace) / "train"
    known = {p.name for p in train_root.iterdir()}
    deadline = time.monotonic() + 120
    checkpoints: list[Path] = []
    while not checkpoints and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        checkpoints = [
            c
            for d in train_root.iterdir()
            if d.name not in known
            for c in d.glob("checkpoints/epoch_*.safetensors")
        ]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert checkpoints, proc.stderr.read() if proc.stderr else ""
    folder = checkpoints[0].parents[1]
    assert not (folder / "manifest.json").exists()
    saved = max(int(c.stem.split("_")[1]) for c in folder.glob("checkpoints/epoch_*.safetensors"))
    before = (folder / "metrics.jsonl").read_text().splitlines()[:saved]

    record = train_pipeline(longer)
    assert record["stages"]["train"]["path"] == str(folder)
    assert not record["stages"]["train"]["cached"]
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, 8))
    assert lines[:saved] == before  # the epochs done before the kill were not redone


@pytest.mark.slow
def test_two_concurrent_runs_share_one_set_of_artifacts(data: DemoScenes, tmp_path: Path) -> None:
    config = demo_config(tmp_path / "ws", data.train[:1], quick=True)
    runs = [_p2p_run(config, tmp_path) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in runs]
    assert [p.returncode for p in runs] == [0, 0], [err[-2000:] for _, err in outputs]
    records = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    keys = [{n: s["key"] for n, s in r["stages"].items()} for r in records]
    assert keys[0] == keys[1]
    for stage in ("tile", "dataset", "train", "evaluate"):
        assert len(list((tmp_path / "ws" / stage).glob("*/manifest.json"))) == 1, stage
    # exactly one run built each stage; the other waited on its lock and reused it
    for name in keys[0]:
        assert sorted(r["stages"][name]["cached"] for r in records) == [False, True], name
    train_dir = Path(records[0]["stages"]["train"]["path"])
    assert len((train_dir / "metrics.jsonl").read_text().splitlines()) == 2


# --- the CLI beside the flows: the plan, the cached fast path, one prediction path ----------

P2P = str(Path(sys.executable).with_name("p2p"))  # the installed console script


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The installed `p2p` in a fresh process, logging every module it imports to stderr."""
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    return subprocess.run(
        [P2P, *args], capture_output=True, text=True, timeout=300, env=env, cwd=cwd
    )


def _imported(stderr: str) -> set[str]:
    return {
        line.rsplit("|", 1)[-1].strip().split(".")[0]
        for line in stderr.splitlines()
        if line.startswith("import time:")
    }


def test_fully_cached_run_answers_without_prefect(
    trained: tuple[PipelineConfig, dict[str, Any]], tmp_path: Path
) -> None:
    config, first = trained
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    out = _cli("run", str(path), "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads(out.stdout.strip().splitlines()[-1])
    assert RunRecord.model_validate(record).pipeline == "train"  # the flow's schema
    assert {n: (s["key"], s["cached"]) for n, s in record["stages"].items()} == {
        n: (s["key"], True) for n, s in first["stages"].items()
    }
    assert record["model"] == first["model"]
    assert record["metrics"] == first["metrics"]["validation"]  # the evaluate stage's
    imported = _imported(out.stderr)
    assert "p2p" in imported and not imported & {"prefect", "torch", "rasterio", "dask"}

    plan = _cli("plan", str(path), "--set", "train.epochs=3", "--json")
    assert plan.returncode == 0, plan.stderr[-2000:]
    stages = json.loads(plan.stdout.strip().splitlines()[-1])["stages"]
    assert {n: s["status"] for n, s in stages.items()} == {
        **{n: "cached" for n in first["stages"]},
        "train": "run",
        "evaluate": "run",
    }
    assert re.fullmatch(r"train\.epochs: \d → 3", stages["train"]["why"])
    assert stages["evaluate"]["why"] == "upstream train changed"
    assert "prefect" not in _imported(plan.stderr)
    dry = _cli("run", str(path), "--set", "train.epochs=3", "--dry-run", "--json")
    assert json.loads(dry.stdout.strip().splitlines()[-1])["stages"] == stages


def test_cli_predict_runs_the_batch_predict_stages(
    demo: dict[str, Any], data: DemoScenes, tmp_path: Path
) -> None:
    mosaic = Path(demo["workspace"]) / "heldout_mosaic.tif"
    scenes = [a for s in data.held_out for a in ("--input", s.source[0])]
    options = ["--batch-size", "8", "--device", "cpu"]  # the window: the model's chip size
    base = ["predict", "--model", demo["model"], *scenes, *options, "--format", "gtiff", "--json"]
    flow_keys = {n: s["key"] for n, s in demo["stages"].items() if n.startswith(("predict", "mos"))}

    # in the flow's workspace, every stage is the flow's: same keys, all reused
    same = _cli(*base, "--output", str(tmp_path / "a.tif"), "--workspace", demo["workspace"])
    assert same.returncode == 0, same.stderr[-2000:]
    same_record = json.loads(same.stdout.strip().splitlines()[-1])
    RunRecord.model_validate(same_record)  # the flow's record and the CLI's share one schema
    assert {n: s["key"] for n, s in same_record["stages"].items()} == flow_keys
    assert_same_raster(tmp_path / "a.tif", mosaic)
    assert (tmp_path / "a.tif").read_bytes() == mosaic.read_bytes()  # delivered as it is
    # nothing to predict: neither Prefect nor torch is loaded (torch alone takes ~1.3 s)
    assert not _imported(same.stderr) & {"prefect", "torch"}

    # in its own (default) workspace: the same prediction keys and the same bytes
    fresh = _cli(*base, "--output", str(tmp_path / "out" / "b.tif"))
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    record = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert record["workspace"] == str(tmp_path / "out" / ".p2p-work")
    predictions = {n: s["key"] for n, s in record["stages"].items() if n.startswith("predict")}
    assert predictions == {n: k for n, k in flow_keys.items() if n.startswith("predict")}
    assert_same_raster(tmp_path / "out" / "b.tif", mosaic)  # pixels and tags, not bytes
    assert "torch" in _imported(fresh.stderr)

    # another output format: the predictions are reused, only the mosaic is built, no torch
    cog = _cli(*base[:-3], "--format", "cog", "--json", "--output", str(tmp_path / "out" / "c.tif"))
    assert cog.returncode == 0, cog.stderr[-2000:]
    stages = json.loads(cog.stdout.strip().splitlines()[-1])["stages"]
    assert {n: s["key"] for n, s in stages.items() if n.startswith("predict")} == predictions
    assert stages["mosaic"]["key"] != record["stages"]["mosaic"]["key"]
    assert "torch" not in _imported(cog.stderr)
    with rasterio.open(tmp_path / "out" / "c.tif") as c, rasterio.open(mosaic) as m:
        np.testing.assert_array_equal(c.read(), m.read())
