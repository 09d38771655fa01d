"""Concurrency: two runs on one workspace share it safely (stage-key file locks) and a reader
polling the workspace never sees a partial artifact under its final name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tests.faultkit import ROOT, write_scene, write_tiny_bundle

# Predicts the scenes in argv[5:] into the workspace argv[1] with the bundle argv[2], each as
# its own cached predict stage, then mosaics them; prints [[scene, cached, output], ...].
# argv[3] is its role at scene b's lock (tests/lockbarrier.py), argv[4] the barrier folder.
CHILD = """
import json, sys, time
import torch
from p2p.core.config import MosaicConfig, PredictConfig, SceneConfig
from p2p.stages.predict import key_parts, run as predict_stage
from p2p.stages.mosaic import run as mosaic_stage
from tests import lockbarrier
torch.set_num_threads(1)
ws, model, role, barrier, scenes = *sys.argv[1:5], sys.argv[5:]
config = PredictConfig(tile_size=32, overlap=4, batch_size=2, device="cpu", output_format="gtiff")
shared = [s for s in scenes if s.endswith("b.tif")]
if role != "alone":
    lockbarrier.install(role, barrier, key_parts(model, SceneConfig(source=shared), config).key)
records = [predict_stage(ws, model, SceneConfig(source=s), config) for s in scenes]
outputs = [r.summary["output"] for r in records]
mosaic = mosaic_stage(ws, outputs, MosaicConfig(), "gtiff")
print(json.dumps([[r.summary["scene"], r.cached, r.summary["output"]] for r in records]
                 + [["mosaic", mosaic.cached, mosaic.summary["output"]]]))
"""


def _start(ws: Path, model: Path, role: str, scenes: list[Path]) -> subprocess.Popen[str]:
    barrier = ws.parent / "barrier"
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(ws), str(model), role, str(barrier), *map(str, scenes)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _check_visible_artifacts(ws: Path, seen: set[str]) -> None:
    """Everything under a final name is whole: manifests parse, rasters read completely."""
    for manifest in ws.glob("*/*/manifest.json"):
        json.loads(manifest.read_text())
        seen.add(str(manifest))
    for tif in ws.glob("*/*/*.tif"):
        if tif.name.startswith("."):
            continue  # temporaries and partial files are not published
        with rasterio.open(tif) as ds:
            ds.read()
        seen.add(str(tif))


@pytest.mark.slow
def test_overlapping_batches_predict_each_scene_once_and_never_show_partials(
    tmp_path: Path,
) -> None:
    model = write_tiny_bundle(tmp_path / "model")
    scenes = [write_scene(tmp_path / f"{n}.tif", height=520, width=40) for n in "abc"]
    ws = tmp_path / "ws"
    # b is shared: the first holds its lock until the second has tried it
    first = _start(ws, model, "holder", scenes[:2])  # a, b
    second = _start(ws, model, "rival", scenes[1:][::-1])  # c, b
    seen: set[str] = set()
    while first.poll() is None or second.poll() is None:
        _check_visible_artifacts(ws, seen)
        time.sleep(0.02)
    outs = [p.communicate() for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outs
    assert {p.name for p in (tmp_path / "barrier").iterdir()} >= {"holder-inside", "rival-tried"}
    records = [json.loads(out.splitlines()[-1]) for out, _ in outs]
    assert seen, "the reader never saw an artifact"

    runs_of_b = [cached for run in records for scene, cached, _ in run if scene == "b"]
    assert sorted(runs_of_b) == [False, True], "scene b was predicted twice (or never)"
    predicted = sorted(p.parent.name for p in ws.glob("predict/*/*.tif"))
    assert len(predicted) == len(set(predicted)) == 3  # one folder per scene, each written once
    # the two mosaics cover different scene sets, so they are different stages
    assert not records[0][-1][1] and not records[1][-1][1]

    alone = tmp_path / "alone"
    solo = subprocess.run(
        [sys.executable, "-c", CHILD, str(alone), str(model), "alone", "-", str(scenes[1])],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert solo.returncode == 0, solo.stderr
    (b_alone,) = [o for s, _, o in json.loads(solo.stdout.splitlines()[-1]) if s == "b"]
    (b_shared,) = {o for run in records for s, _, o in run if s == "b"}
    with rasterio.open(b_alone) as x, rasterio.open(b_shared) as y:
        np.testing.assert_array_equal(x.read(), y.read())


# Runs the batch_predict flow (argv: workspace, model, output, role at scene b's lock,
# barrier folder, scenes...) and prints {stage name: cached}.
FLOW_CHILD = """
import json, sys
from flows.batch_predict import batch_predict
from p2p.core.config import BatchPredictConfig, PredictConfig, SceneConfig
from p2p.stages.predict import key_parts
from tests import lockbarrier
ws, model, output, role, barrier, scenes = *sys.argv[1:6], sys.argv[6:]
predict = PredictConfig(tile_size=32, overlap=4, batch_size=2, device="cpu", output_format="gtiff")
shared = [s for s in scenes if s.endswith("b.tif")]
lockbarrier.install(role, barrier, key_parts(model, SceneConfig(source=shared), predict).key)
config = BatchPredictConfig(
    workspace=ws, model=model, scenes=scenes, output=output, predict=predict
)
record = batch_predict(config)
print(json.dumps({name: stage["cached"] for name, stage in record["stages"].items()}))
"""


@pytest.mark.slow
def test_two_batch_predict_flows_on_overlapping_scenes(
    prefect_harness: None, tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_URL

    model = write_tiny_bundle(tmp_path / "model")
    scenes = [write_scene(tmp_path / f"{n}.tif", height=260, width=40) for n in "abc"]
    ws = tmp_path / "ws"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    barrier = str(tmp_path / "barrier")  # the first holds b's lock until the second tried it
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                FLOW_CHILD,
                str(ws),
                str(model),
                str(tmp_path / out),
                role,
                barrier,
                *lst,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        for out, role, lst in (
            ("ab.tif", "holder", map(str, scenes[:2])),
            ("cb.tif", "rival", map(str, scenes[:0:-1])),
        )
    ]
    outs = [p.communicate(timeout=300) for p in runs]
    assert [p.returncode for p in runs] == [0, 0], [err[-2000:] for _, err in outs]
    assert {p.name for p in Path(barrier).iterdir()} >= {"holder-inside", "rival-tried"}
    records = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert sorted(r["predict:b"] for r in records) == [False, True]  # b built once, reused once
    assert len(list(ws.glob("predict/*/manifest.json"))) == 3
    for name in ("ab.tif", "cb.tif"):
        with rasterio.open(tmp_path / name) as ds:
            assert ds.read(masked=True).count() > 0
