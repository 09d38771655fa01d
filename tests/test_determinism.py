"""Same model, scene and settings → same pixels, in every process (issue 19 item 11).

A prediction made by the installed `p2p predict` in fresh processes that differ in what may
differ between a user's runs (OpenMP threads, working directory, workspace, GDAL's block
cache) and one made in this process with the scenes predicted concurrently in threads (as
Prefect's task runner does) and torch on one thread must hold the same pixels, grid and tags
(`tests.rasters.assert_same_raster`), scene by scene and for the mosaic.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from p2p.core.config import MosaicConfig, PredictConfig, SceneConfig
from p2p.core.roots import checked_pipeline_config
from p2p.demo import DemoScenes, demo_config, write_demo_scenes
from p2p.infer.translator import Translator
from p2p.model.networks.unet import UNetGenerator
from p2p.stages import mosaic, predict
from p2p.stages.pipeline import TRAINING, PredictionJob, in_process, run_steps
from tests.rasters import assert_same_raster

P2P = str(Path(sys.executable).parent / "p2p")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoScenes, str]:
    root = tmp_path_factory.mktemp("determinism")
    data = write_demo_scenes(root / "scenes", scene_size=96)
    cfg = checked_pipeline_config(demo_config(root / "ws", data.train[:2], quick=True))
    records = run_steps(TRAINING, cfg, cfg.workspace, in_process(), until="train")
    return data, str(records["train"].summary["model"])


def _cli_predict(model: str, data: DemoScenes, out: Path, **env: str) -> dict[str, Any]:
    out.parent.mkdir(parents=True)
    scenes = [a for s in data.held_out for a in ("--input", s.source[0])]
    options = ["--device", "cpu", "--format", "gtiff", "--json"]
    done = subprocess.run(
        [P2P, "predict", "--model", model, *scenes, "--output", str(out), *options],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=out.parent,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    record: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return record


def _in_threads(model: str, data: DemoScenes, workspace: Path) -> dict[str, str]:
    """The scenes predicted concurrently in threads, torch on one thread, then the mosaic."""
    config = PredictConfig(device="cpu", output_format="gtiff")
    scenes = [SceneConfig(source=s.source) for s in data.held_out]  # as the CLI makes them
    job = PredictionJob(
        str(workspace), model, scenes, config, MosaicConfig(), str(workspace / "out.tif")
    )
    outputs: dict[str, str] = {}

    def one(scene: Any) -> None:
        record = predict.run(job.workspace, model, scene, job.per_scene)
        outputs[f"predict:{scene.scene_id}"] = record.summary["output"]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        workers = [threading.Thread(target=one, args=(s,)) for s in scenes]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        torch.set_num_threads(threads)
    predictions = [outputs[f"predict:{s.scene_id}"] for s in scenes]
    outputs["mosaic"] = mosaic.run(job.workspace, predictions, job.mosaic, "gtiff").summary[
        "output"
    ]
    return outputs


def _outputs(record: dict[str, Any]) -> dict[str, str]:
    """Stage label → output file of a `p2p predict --json` record."""
    return {
        label: str(next(Path(stage["path"]).glob("*.tif")))
        for label, stage in record["stages"].items()
    }


def test_cpu_forward_does_not_depend_on_the_thread_count() -> None:
    """oneDNN's transposed convolutions on 3 intra-op threads sum in another order than on 1
    (2.4e-7 apart for this generator before the window-parallel forward); the translator's
    pixels are the same on any count, in any batch, in any memory layout."""
    torch.manual_seed(0)
    generator = UNetGenerator(3, 3, num_downs=5, ngf=8, linear_anchor=True)
    for module in generator.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # running stats away from 0/1
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    x = torch.randn(5, 3, 64, 64)
    before = torch.get_num_threads()
    outputs = []
    try:
        for threads in (1, 2, 3, 5):
            torch.set_num_threads(threads)
            translator = Translator(generator, torch.device("cpu"))
            outputs.append(translator.run(x))
            outputs.append(translator.run(x[1:4]))
            # a batch gathered by numpy at a scene's edge comes channels-last in memory
            channels_last = translator.run(x.contiguous(memory_format=torch.channels_last))
            assert torch.equal(channels_last, outputs[-2])
            assert torch.get_num_threads() == threads  # the budget's count comes back
    finally:
        torch.set_num_threads(before)
    for y in outputs[2::2]:
        assert torch.equal(y, outputs[0])
    for y in outputs[3::2]:
        assert torch.equal(y, outputs[0][1:4])


@pytest.mark.slow
def test_same_pixels_in_every_process(trained: tuple[DemoScenes, str], tmp_path: Path) -> None:
    data, model = trained
    one = _cli_predict(model, data, tmp_path / "a" / "out.tif", P2P_THREADS="1")
    other = _cli_predict(
        model, data, tmp_path / "b" / "deeper" / "out.tif", GDAL_CACHEMAX="1", P2P_THREADS="3"
    )
    assert one["workspace"] != other["workspace"]
    here = _in_threads(model, data, tmp_path / "c")
    first, second = _outputs(one), _outputs(other)
    assert set(first) == set(second) == set(here)
    for label in first:
        assert_same_raster(first[label], second[label])
        assert_same_raster(first[label], here[label])
    assert_same_raster(tmp_path / "a" / "out.tif", tmp_path / "b" / "deeper" / "out.tif")
