"""What a prediction is, and what it says about itself: the identity of a scene's job (the
settings and inputs that decide its pixels, which key the predict stage and guard a resumed
partial output) and the provenance tags its raster carries."""

from __future__ import annotations

import json
from typing import Any

from p2p import __version__
from p2p.core.cache import fingerprint_file, stage_key
from p2p.core.config import PredictConfig, SceneConfig
from p2p.infer.strips import StripPlan
from p2p.model.meta import BundleRef

#: Format of a resumable partial output (the row-strip state); bump it when that changes.
JOB_VERSION = 1


def job_parts(
    weights_hash: str, scene: SceneConfig, config: PredictConfig
) -> tuple[dict[str, Any], list[str]]:
    """What decides a prediction's pixels: (settings, input fingerprints).

    The one definition: `scene_job` hashes it to guard a resumed partial output, and the
    predict stage keys on it (`p2p.stages.predict`).
    """
    inputs = [f"weights:{weights_hash}", *(fingerprint_file(p) for p in scene.source)]
    return {
        "scene": scene.model_dump(mode="json"),
        "predict": config.model_dump(mode="json"),
    }, inputs


def scene_job(bundle: BundleRef, scene: SceneConfig, config: PredictConfig) -> str:
    """Fingerprint of everything that decides the output's pixels."""
    return stage_key("predict-scene", JOB_VERSION, *job_parts(bundle.weights_hash, scene, config))


#: Tag holding a prediction's window layout (`p2p.infer.seams` finds window boundaries by it).
LAYOUT_TAG = "P2P_WINDOW_LAYOUT"


def layout_tag(plan: StripPlan) -> str:
    """The window layout as JSON, ``[rows, columns]`` per entry: window ``k`` of an axis spans
    ``[origin + k·stride - overlap, … + tile)`` and owns ``[origin + k·stride, … + stride)``;
    ``count`` windows per axis (1: no boundary on that axis)."""
    ly, lx = plan.ly, plan.lx
    return json.dumps(
        {
            "tile": [ly.tile, lx.tile],
            "overlap": [ly.overlap, lx.overlap],
            "stride": [ly.stride, lx.stride],
            "origin": [0, 0],
            "count": [ly.count, lx.count],
            "blend": lx.blend,
        }
    )


def output_tags(
    bundle: BundleRef, scene: SceneConfig, config: PredictConfig, plan: StripPlan
) -> dict[str, str]:
    """The tags a prediction carries: p2p's version, the weights, the scene, the settings and
    the window layout."""
    return {
        "P2P_VERSION": __version__,
        "P2P_MODEL_SHA256": str(bundle.weights_hash),
        "P2P_SCENE": scene.scene_id,
        "P2P_SETTINGS": config.model_dump_json(),
        LAYOUT_TAG: layout_tag(plan),
    }
