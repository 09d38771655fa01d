"""Stage `predict`: one scene with a model bundle → ``{workspace}/predict/{key}/{scene}.tif``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from p2p.core import storage
from p2p.core.cache import KeyParts, StageRecord, run_stage
from p2p.core.config import PredictConfig, SceneConfig
from p2p.stages.stage import Progress, Stage

NAME = "predict"
#: 2: the CPU forward runs on one intra-op thread (`p2p.infer.cpuforward`); predictions made
#: on several of torch's threads may differ from it by one unit in rare pixels.
VERSION = 2


def key_parts(model: str | Path, scene: SceneConfig, config: PredictConfig) -> KeyParts:
    """What decides the pixels (`p2p.infer.provenance.job_parts`): the bundle's weights hash,
    the scene's settings and file fingerprints, and the inference settings.

    Raises:
        InputError: a source file is missing.
        BundleError: the model folder is not a bundle.
    """
    from p2p.infer.provenance import job_parts
    from p2p.model.meta import read_ref

    for path in scene.source:
        storage.require_file(path)
    return KeyParts(NAME, VERSION, *job_parts(read_ref(model).weights_hash, scene, config))


def run(
    workspace: str | Path,
    model: str | Path,
    scene: SceneConfig,
    config: PredictConfig,
    progress: Progress | None = None,
) -> StageRecord:
    """Predict one scene window by window onto its own grid; an interrupted run resumes its
    row strips inside the folder.

    Args:
        workspace: Workspace root.
        model: The model bundle folder.
        scene: The source scene.
        config: Window, batch, blend, device and format settings.
        progress: Called with (strips done, strips in the scene).

    Returns:
        The record; summary holds output, scene, width, height, bands, dtype, nodata and
        uncertainty (its raster with ``config.uncertainty``, else None).
    """
    from p2p.infer.inference import predict_scene
    from p2p.model.meta import read_ref

    parts = key_parts(model, scene, config)  # a missing scene is named before the model is read
    ref = read_ref(model, verify=True)  # truncated weights: refused before the stage folder exists

    def build(folder: Path) -> dict[str, Any]:
        # the runtime loads what it runs: the torch runtime the weights, the ONNX one its file
        result = predict_scene(ref, scene, folder / f"{scene.scene_id}.tif", config, progress)
        return {
            "output": result.output,
            "scene": result.scene,
            "width": result.width,
            "height": result.height,
            "bands": result.bands,
            "dtype": result.dtype,
            "nodata": None if math.isnan(result.nodata) else result.nodata,
            "uncertainty": result.uncertainty,
        }

    return run_stage(workspace, parts, build)


STAGE = Stage(
    NAME, VERSION, key_parts, run, task="predict-scene", gpu=True, retries=1, unit="row strips"
)
