"""Dataset assembly: chip filter, spatial split, streamed stats, and the torch Dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from distributed import Client
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.bands.normalization import normalize
from p2p.core.config import DaskConfig, DatasetConfig, SceneConfig, TilingConfig
from p2p.core.errors import StageError
from p2p.data import chipstore
from p2p.data.bandstats import FLOAT_BINS, StatsAccumulator
from p2p.data.dataset import ChipDataset, load_stats, spatial_split
from p2p.stages.dataset import run as dataset_stage
from p2p.stages.tile import run as tile_stage
from tests.rasters import write_geotiff

TILING = TilingConfig(chip_size=32, stride=24, block_chips=2, min_valid_fraction=0.6)
SPLIT = DatasetConfig(val_fraction=0.3, split_block_chips=2, seed=3)


def tile_scene(root: Path, name: str, src: np.ndarray, tgt: np.ndarray, client: Client) -> str:
    """Write a source/target pair and tile it with nodata 0; return the tile folder."""
    write_geotiff(root / f"{name}_s.tif", src)
    write_geotiff(root / f"{name}_t.tif", tgt)
    files = {"source": [str(root / f"{name}_s.tif")], "target": [str(root / f"{name}_t.tif")]}
    scene = SceneConfig(**files, nodata=0)
    return tile_stage(root / "ws", scene, TILING, DaskConfig(), client=client).path


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory, client: Client) -> tuple[Path, list[str]]:
    """Two tiled scenes (uint16 source with fill borders, float32 target) in one workspace."""
    root = tmp_path_factory.mktemp("ds")
    rng = np.random.default_rng(0)
    dirs = []
    for n, (h, w) in enumerate([(200, 170), (130, 150)]):
        src = rng.integers(1, 5000, (2, h, w)).astype(np.uint16)
        src[:, :, -25:] = 0
        noise = rng.normal(0, 1, (1, h, w))
        tgt = (src[:1].astype(np.float32) * 0.01 + noise).astype(np.float32)
        dirs.append(tile_scene(root, f"s{n}", src, tgt, client))
    return root / "ws", dirs


def footprint_overlap(a: pd.Series, b: pd.Series, k: int) -> bool:
    return abs(int(a.x0) - int(b.x0)) < k and abs(int(a.y0) - int(b.y0)) < k


def test_split_is_spatial_and_stats_match_numpy(tiles: tuple[Path, list[str]]) -> None:
    ws, dirs = tiles
    rec = dataset_stage(ws, dirs, SPLIT, TILING)
    ds_train, ds_val = ChipDataset(rec.path, "train"), ChipDataset(rec.path, "val")
    assert len(ds_train) == rec.summary["n_train"] > 0 and len(ds_val) == rec.summary["n_val"] > 0
    indexes = [chipstore.read_index(d).set_index("chip") for d in dirs]
    rows = {
        s: [(t, indexes[t].loc[c]) for t, c in d.items]
        for s, d in (("train", ds_train), ("val", ds_val))
    }
    for _, r in rows["train"] + rows["val"]:
        assert r.valid_fraction >= TILING.min_valid_fraction
    for tv, v in rows["val"]:
        assert not any(tt == tv and footprint_overlap(t, v, 32) for tt, t in rows["train"])
    # Statistics against numpy on exactly the valid pixels of the train chips.
    src, tgt = [], []
    for t, chip in ds_train.items:
        arrays = chipstore.open_arrays(dirs[t])
        valid = arrays["valid"][chip]
        src.append(arrays["source"][chip][:, valid])
        tgt.append(arrays["target"][chip][:, valid])
    s, g = (
        np.concatenate(src, axis=1).astype(np.float64),
        np.concatenate(tgt, axis=1).astype(np.float64),
    )
    source, target = load_stats(rec.path)
    np.testing.assert_allclose(source.mean, s.mean(axis=1), rtol=1e-10)
    np.testing.assert_allclose(source.std, s.std(axis=1), rtol=1e-10)
    np.testing.assert_allclose(source.low, np.percentile(s, 0.5, axis=1), rtol=1e-12)
    np.testing.assert_allclose(source.high, np.percentile(s, 99.5, axis=1), rtol=1e-12)
    width = (g.max() - g.min()) / FLOAT_BINS
    np.testing.assert_allclose(target.mean, g.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(target.low, np.percentile(g, 0.5, axis=1), atol=width)
    np.testing.assert_allclose(target.high, np.percentile(g, 99.5, axis=1), atol=width)
    assert dataset_stage(ws, dirs, SPLIT, TILING).cached


def test_chip_dataset_normalizes_masks_and_augments_in_pairs(tiles: tuple[Path, list[str]]) -> None:
    ws, dirs = tiles
    rec = dataset_stage(ws, dirs, SPLIT, TILING)
    plain = ChipDataset(rec.path, "train")
    source_stats, target_stats = load_stats(rec.path)
    x, y, m = plain[0]
    assert x.shape == (2, 32, 32) and y.shape == (1, 32, 32) and m.shape == (1, 32, 32)
    assert x.dtype == y.dtype == m.dtype == torch.float32 and float(x.abs().max()) <= 1
    t, chip = plain.items[0]
    arrays = chipstore.open_arrays(dirs[t])
    valid = arrays["valid"][chip]
    expected = normalize(arrays["source"][chip], source_stats)
    np.testing.assert_allclose(x.numpy()[:, valid], expected[:, valid])
    expected_y = normalize(arrays["target"][chip], target_stats)
    np.testing.assert_allclose(y.numpy()[:, valid], expected_y[:, valid])
    assert (x.numpy()[:, ~valid] == 0).all() and (m[0].numpy() == valid).all()
    aug = ChipDataset(rec.path, "train", augment=True, seed=1)
    changed = 0
    for i in range(6):
        xa, ya, ma = aug[i]
        xp, yp, mp = plain[i]
        ops = [
            lambda a, k=k, f=f: (
                torch.rot90(a, k, (1, 2)).flip(2) if f else torch.rot90(a, k, (1, 2))
            )
            for k in range(4)
            for f in (0, 1)
        ]
        assert any(
            torch.equal(op(xp), xa) and torch.equal(op(yp), ya) and torch.equal(op(mp), ma)
            for op in ops
        )
        assert torch.equal(aug[i][0], xa)  # deterministic for a given (seed, epoch, index)
        aug.set_epoch(1)
        changed += not torch.equal(aug[i][0], xa)
        aug.set_epoch(0)
    assert changed > 0
    loader = torch.utils.data.DataLoader(plain, batch_size=4, num_workers=2)
    first = next(iter(loader))
    assert torch.equal(first[0][0], x)


def test_dataset_rejects_unfinished_tiles_and_empty_filters(
    tiles: tuple[Path, list[str]], tmp_path: Path, client: Client
) -> None:
    ws, _ = tiles
    with pytest.raises(StageError, match="not a finished tile stage"):
        dataset_stage(ws, [str(tmp_path)], SPLIT, TILING)
    holes = np.ones((1, 96, 96), np.uint16)
    holes[:, ::16, ::16] = 0  # every chip misses a few pixels
    ws2 = tmp_path / "ws"
    holed = tile_scene(tmp_path, "holes", holes, holes.astype(np.float32), client)
    strict = TILING.model_copy(update={"min_valid_fraction": 1.0})
    with pytest.raises(StageError, match="no chip has valid_fraction"):
        dataset_stage(ws2, [holed], SPLIT, strict)
    assert not list(ws2.glob("dataset/**/manifest.json"))


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "float32"])
def test_streamed_stats_equal_numpy(dtype: str) -> None:
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype) if dtype != "float32" else None
    data = (
        rng.integers(info.min, info.max, (10, 3, 8, 8), endpoint=True).astype(dtype)
        if info
        else rng.normal(5, 3, (10, 3, 8, 8)).astype(dtype)
    )
    valid = rng.random((10, 8, 8)) > 0.3
    acc = StatsAccumulator(3, dtype)
    for p in range(acc.passes):
        for lo in range(0, 10, 3):
            acc.update(data[lo : lo + 3], valid[lo : lo + 3], p)
    stats = acc.result()
    px = np.moveaxis(data, 1, 0)[:, valid].astype(np.float64)
    tol = 0 if info else (px.max() - px.min()) / FLOAT_BINS
    np.testing.assert_allclose(stats.mean, px.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(stats.std, px.std(axis=1), rtol=1e-6)
    np.testing.assert_allclose(stats.low, np.percentile(px, 0.5, axis=1), atol=tol, rtol=1e-12)
    np.testing.assert_allclose(stats.high, np.percentile(px, 99.5, axis=1), atol=tol, rtol=1e-12)


@settings(max_examples=50, deadline=None)
@given(
    rows=st.integers(1, 12),
    cols=st.integers(1, 12),
    stride=st.sampled_from([8, 16, 24, 32]),
    sbc=st.integers(1, 4),
    frac=st.floats(0.05, 0.9),
    seed=st.integers(0, 5),
)
def test_split_never_puts_overlapping_chips_on_both_sides(
    rows: int, cols: int, stride: int, sbc: int, frac: float, seed: int
) -> None:
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    index = pd.DataFrame(
        {"tile": 0, "chip": np.arange(r.size), "x0": c.ravel() * stride, "y0": r.ravel() * stride}
    )
    out = spatial_split(
        index, 32, stride, DatasetConfig(val_fraction=frac, split_block_chips=sbc, seed=seed)
    )
    train, val = out[out.split == "train"], out[out.split == "val"]
    for v in val.itertuples():
        assert not ((abs(train.x0 - v.x0) < 32) & (abs(train.y0 - v.y0) < 32)).any()
    n_blocks = len(
        {
            (y // (sbc * stride), x // (sbc * stride))
            for x, y in zip(index.x0, index.y0, strict=True)
        }
    )
    if n_blocks >= 2 and stride == 32:  # without overlap nothing is dropped: both sides exist
        assert len(val) > 0 and len(train) > 0
