"""The demo: synthetic paired scenes (satellite RGB → map) on a UTM grid, configs sized for two
CPU cores, and the held-out report (input | prediction | target and a metrics table).

Scenes are windows of one procedural world (`p2p.demo.world`), so overlapping scenes agree
pixel for pixel. No Prefect here: `flows/demo.py` composes these with the flows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from rasterio.transform import Affine

from p2p.core.config import (
    BatchPredictConfig,
    DaskConfig,
    DatasetConfig,
    ModelConfig,
    PipelineConfig,
    PredictConfig,
    SceneConfig,
    TilingConfig,
    TrainConfig,
    TrainingScene,
)
from p2p.demo.world import (
    ORIGIN,
    PIXEL_M,
    make_world,
    render_map,
    render_satellite,
    write_geotiff,
)

log = logging.getLogger(__name__)

DEMO_EPOCHS = 40
DEMO_SEED = 5

Window = tuple[int, int, int, int]  # row, col, height, width in world pixels


@dataclass(frozen=True)
class DemoScenes:
    """The demo's files: training pairs, two overlapping held-out pairs, and their union."""

    train: list[SceneConfig]
    held_out: list[SceneConfig]
    union_source: str
    union_target: str


def layout(scene: int) -> tuple[tuple[int, int], list[Window], list[Window], Window]:
    """World size, three training windows side by side, and below them (after a gap) two
    held-out windows that overlap each other by a third of a scene, plus their union."""
    gap = max(16, scene // 6)
    row = scene + gap
    a, b = scene // 2, scene // 2 + (2 * scene) // 3
    train = [(0, i * scene, scene, scene) for i in range(3)]
    held = [(row, a, scene, scene), (row, b, scene, scene)]
    return (2 * scene + gap, 3 * scene), train, held, (row, a, scene, b + scene - a)


def _crop(data: NDArray[np.uint8], window: Window) -> NDArray[np.uint8]:
    r, c, h, w = window
    return np.ascontiguousarray(data[:, r : r + h, c : c + w])


def _window_transform(window: Window) -> Affine:
    r, c = window[0], window[1]
    return Affine(PIXEL_M, 0.0, ORIGIN[0] + c * PIXEL_M, 0.0, -PIXEL_M, ORIGIN[1] - r * PIXEL_M)


def write_demo_scenes(
    folder: str | Path, scene_size: int = 384, seed: int = DEMO_SEED
) -> DemoScenes:
    """Render the demo world and write its scenes as GeoTIFFs (satellite RGB + map RGB).

    Files that a previous call finished (marked by ``scenes.done``) are kept untouched, so
    their fingerprints, and every stage cached on them, stay valid.

    Args:
        folder: Where the GeoTIFFs go.
        scene_size: Scene side in pixels (2 m pixels, so 384 px ≈ 770 m).
        seed: World seed.
    """
    folder = Path(folder)
    (world_h, world_w), train_w, held_w, union_w = layout(scene_size)
    names = [f"train_{i + 1}" for i in range(len(train_w))] + ["heldout_a", "heldout_b"]
    windows = [*train_w, *held_w, union_w]
    done = folder / f"scenes-{scene_size}-{seed}.done"
    if not done.is_file():
        log.info("rendering a %dx%d demo world into %s", world_w, world_h, folder)
        world = make_world(world_h, world_w, seed)
        image, target = render_satellite(world, seed), render_map(world)
        for name, window in zip([*names, "heldout_union"], windows, strict=True):
            for suffix, data in (("image", image), ("map", target)):
                path = folder / f"{name}_{suffix}.tif"
                bands = tuple(f"{suffix}_{c}" for c in ("red", "green", "blue"))
                write_geotiff(path, _crop(data, window), _window_transform(window), bands)
        done.write_text("complete\n")
    scenes = [
        SceneConfig(
            source=[str(folder / f"{n}_image.tif")], target=[str(folder / f"{n}_map.tif")], name=n
        )
        for n in names
    ]
    return DemoScenes(
        train=scenes[: len(train_w)],
        held_out=scenes[len(train_w) :],
        union_source=str(folder / "heldout_union_image.tif"),
        union_target=str(folder / "heldout_union_map.tif"),
    )


# --- the demo's configs and report --------------------------------------------------------


def demo_config(
    workspace: str | Path, scenes: list[SceneConfig], quick: bool = False
) -> PipelineConfig:
    """A pipeline config sized to train in a few minutes on two CPU cores.

    Args:
        workspace: Workspace root.
        scenes: The training scene pairs.
        quick: A much smaller run (for tests): tiny model, two epochs.
    """
    chip = 32 if quick else 64
    return PipelineConfig(
        workspace=str(workspace),
        scenes=list[TrainingScene](scenes),
        tiling=TilingConfig(chip_size=chip, stride=chip // 2, block_chips=4),
        dataset=DatasetConfig(val_fraction=0.15, split_block_chips=4 if quick else 3),
        model=ModelConfig(
            num_downs=5 if quick else 6,
            ngf=4 if quick else 16,
            ndf=8 if quick else 16,
            n_layers_d=2,
        ),
        train=TrainConfig(
            epochs=1 if quick else DEMO_EPOCHS,
            epochs_decay=1 if quick else DEMO_EPOCHS // 2,
            batch_size=8,
            lr=2e-4 if quick else 5e-4,
            lambda_l1=100.0,
            device="cpu",
            preview_chips=4,
        ),
        predict=PredictConfig(batch_size=8, device="cpu"),
        dask=DaskConfig(n_workers=1, threads_per_worker=2),
    )


def demo_batch_config(
    workspace: str | Path, model: str, data: DemoScenes, quick: bool = False
) -> BatchPredictConfig:
    """Predict the two held-out scenes with `model` into ``{workspace}/heldout_mosaic.tif``."""
    return BatchPredictConfig(
        workspace=str(workspace),
        model=model,
        scenes=[s.source[0] for s in data.held_out],
        output=str(Path(workspace) / "heldout_mosaic.tif"),
        predict=PredictConfig(batch_size=8, device="cpu", output_format="gtiff"),
        dask=DaskConfig(n_workers=1, threads_per_worker=2),
    )
