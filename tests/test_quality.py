"""Translation quality through the real path: ChipDataset + train() + predict_scene.

One small real scene pair (GeoTIFFs with a nodata hole) is tiled and split once per module; each
test trains a tiny model on it and checks one of issue 11's defects.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from distributed import Client

from p2p.core.cache import StageRecord
from p2p.core.config import (
    DaskConfig,
    DatasetConfig,
    ModelConfig,
    PredictConfig,
    SceneConfig,
    TilingConfig,
    TrainConfig,
)
from p2p.data import chipstore
from p2p.data.dataset import ChipDataset, dataset_stage, load_stats
from p2p.data.tiling import tile_stage
from p2p.infer.inference import predict_scene
from p2p.model.bundle import load_bundle
from p2p.model.normalization import denormalize
from p2p.model.training import train
from p2p.stages.pipeline import train_stage
from tests.rasters import write_geotiff

CHIP = 32
NODATA = -9999.0
TILING = TilingConfig(chip_size=CHIP, stride=CHIP, block_chips=2, min_valid_fraction=0.5)
SPLIT = DatasetConfig(val_fraction=0.25, split_block_chips=2, seed=0)
TINY = ModelConfig(num_downs=4, ngf=8, ndf=8, n_layers_d=2, dropout=0.0)
QUICK = TrainConfig(epochs=2, batch_size=4, device="cpu", preview_chips=0, seed=0)


def smooth_field(rng: np.random.Generator, bands: int, size: int) -> np.ndarray:
    """`(bands, size, size)` float32 noise blurred over ~8 px, scaled to about 0..200."""
    noise = rng.normal(0, 1, (bands, size // 8 + 2, size // 8 + 2))
    big = np.kron(noise, np.ones((8, 8)))[:, :size, :size]
    kernel = np.ones(5) / 5
    for axis in (1, 2):
        big = np.apply_along_axis(np.convolve, axis, big, kernel, mode="same")
    return (100 + 40 * big).astype(np.float32)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> SceneConfig:
    """A 128x128 pair: 3 source bands with a nodata hole, 1 target band = linear + texture."""
    root = tmp_path_factory.mktemp("scene")
    rng = np.random.default_rng(11)
    src = smooth_field(rng, 3, 128)
    texture = src[0] - np.roll(src[0], 2, axis=1)
    tgt = (0.5 * src[0] + 0.3 * src[1] - 0.2 * src[2] + 0.8 * texture + 20)[None]
    src[:, 40:46, 70:75] = NODATA
    write_geotiff(root / "src.tif", src, nodata=NODATA)
    write_geotiff(root / "tgt.tif", tgt.astype(np.float32))
    return SceneConfig(source=[str(root / "src.tif")], target=[str(root / "tgt.tif")])


@pytest.fixture(scope="module")
def dataset(scene: SceneConfig, tmp_path_factory: pytest.TempPathFactory, client: Client) -> Any:
    ws = tmp_path_factory.mktemp("ws")
    tiles = tile_stage(ws, scene, TILING, DaskConfig(), client=client)
    return ws, dataset_stage(ws, [tiles.path], SPLIT, TILING)


class RecordingChips(ChipDataset):
    """The real ChipDataset; remembers a digest of every source chip it hands out."""

    seen: list[tuple[int, int, str]]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y, m = super().__getitem__(i)
        self.seen.append((self.epoch, i, hashlib.sha1(x.numpy().tobytes()).hexdigest()))
        return x, y, m


def test_training_draws_new_augmentations_every_epoch(dataset: Any, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    _, ds = dataset
    chips = RecordingChips(ds.path, "train", augment=True, seed=0)
    chips.seen = []
    cfg = QUICK.model_copy(update={"epochs": 3})
    train(chips, None, TINY, cfg, tmp_path, load_stats(ds.path)[1])
    by_epoch: dict[int, dict[int, str]] = {}
    for epoch, i, digest in chips.seen[1:]:  # the first is the input check before epoch 1
        by_epoch.setdefault(epoch, {})[i] = digest
    assert sorted(by_epoch) == [1, 2, 3]
    n = len(chips)
    changed = sum(
        by_epoch[1][i] != by_epoch[2][i] or by_epoch[2][i] != by_epoch[3][i] for i in range(n)
    )
    assert changed >= n // 2, (changed, n)


def _bundle(
    dataset: Any, tmp_path: Path, model: ModelConfig = TINY, **train_cfg: Any
) -> StageRecord:
    torch.set_num_threads(1)
    _, ds = dataset
    return train_stage(tmp_path, ds, model, QUICK.model_copy(update=train_cfg))


def test_prediction_at_chip_size_reproduces_the_model_on_stored_chips(
    dataset: Any, scene: SceneConfig, tmp_path: Path
) -> None:
    trained = _bundle(dataset, tmp_path)
    bundle = load_bundle(trained.summary["model"])
    out = tmp_path / "pred.tif"
    config = PredictConfig(tile_size=CHIP, overlap=0, blend="none", output_format="gtiff")
    predict_scene(bundle, scene, out, config)
    with rasterio.open(out) as src:
        predicted = src.read(1)
    _, ds = dataset
    chips = ChipDataset(ds.path, "train")
    index = chipstore.read_index(chips.tile_dirs[0]).set_index("chip")
    stats = load_stats(ds.path)[1]
    compared = 0
    with torch.no_grad():
        for i in range(len(chips)):
            x, _, valid = chips[i]
            expected = denormalize(bundle.generator(x[None]), stats)[0, 0].numpy()
            row = index.loc[int(chips.items[i][1])]
            y0, x0 = int(row["y0"]), int(row["x0"])
            got = predicted[y0 : y0 + CHIP, x0 : x0 + CHIP]
            mask = valid[0].numpy() > 0.5
            np.testing.assert_allclose(got[mask], expected[mask], rtol=1e-5, atol=1e-3)
            compared += int(mask.sum() < mask.size)
    assert compared >= 1  # a chip with the nodata hole was among them


def test_prediction_window_defaults_to_the_chip_size(
    dataset: Any, scene: SceneConfig, tmp_path: Path
) -> None:
    trained = _bundle(dataset, tmp_path, epochs=1)
    bundle = load_bundle(trained.summary["model"])
    default = predict_scene(bundle, scene, tmp_path / "a.tif", PredictConfig(output_format="gtiff"))
    assert (PredictConfig().window(bundle.meta.chip_size)) == (CHIP, CHIP // 8)
    explicit = PredictConfig(tile_size=CHIP, overlap=CHIP // 8, output_format="gtiff")
    predict_scene(bundle, scene, tmp_path / "b.tif", explicit)
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
    assert default.strips == -(-128 // (CHIP - 2 * (CHIP // 8)))
