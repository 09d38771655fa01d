"""Translation quality through the real path: ChipDataset + train() + predict_scene.

One small real scene pair (GeoTIFFs with a nodata hole) is tiled and split once per module; each
test trains a tiny model on it and checks one of issue 11's defects.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from distributed import Client

from p2p.bands.normalization import denormalize
from p2p.bands.symmetry import dihedral, undo_dihedral
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
from p2p.data.dataset import ChipDataset, load_baselines, load_stats
from p2p.infer.inference import predict_scene
from p2p.infer.report import evaluate_report, skill_markdown, train_report
from p2p.infer.seams import SeamAccumulator, read_layout
from p2p.model.bundle import load_bundle
from p2p.model.checkpoint import load_checkpoint
from p2p.model.epoch import TrainProgress
from p2p.model.metrics import score_batches
from p2p.model.pix2pix import build_pix2pix
from p2p.model.training import train
from p2p.raster import SceneReader
from p2p.stages.dataset import run as dataset_stage
from p2p.stages.evaluate import run as evaluate_stage
from p2p.stages.tile import run as tile_stage
from p2p.stages.train import run as train_stage
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
    config = PredictConfig(
        tile_size=CHIP, overlap=0, blend="none", output_format="gtiff", tta=False
    )
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


def test_bundle_keeps_the_epoch_with_the_best_validation_mae(dataset: Any, tmp_path: Path) -> None:
    _, ds = dataset
    trained = _bundle(dataset, tmp_path / "best", epochs=4, lr=2e-3)
    lines = [json.loads(x) for x in (Path(trained.path) / "metrics.jsonl").read_text().splitlines()]
    maes = [r["val_mae"] for r in lines]
    best = int(np.argmin(maes)) + 1
    assert trained.summary["kept_epoch"] == best
    assert load_bundle(trained.summary["model"]).meta.training["kept_epoch"] == best
    scored = evaluate_stage(tmp_path / "best", trained, ds, PredictConfig())
    assert scored.summary["metrics"]["overall"]["mae"] == pytest.approx(min(maes), rel=1e-4)
    last = _bundle(dataset, tmp_path / "last", epochs=4, lr=2e-3, keep="last")
    assert last.summary["kept_epoch"] == 4
    scored = evaluate_stage(tmp_path / "last", last, ds, PredictConfig())
    assert scored.summary["metrics"]["overall"]["mae"] == pytest.approx(maes[-1], rel=1e-4)


def _train_pixels(ds_path: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(Cs, P) and (Ct, P) valid raster pixels of a split's chips, read straight from Zarr."""
    chips = ChipDataset(ds_path, split)  # type: ignore[arg-type]
    arrays = chipstore.open_arrays(chips.tile_dirs[0])
    slots = np.sort(chips.items[:, 1])
    valid = np.asarray(arrays["valid"].oindex[slots], dtype=bool)
    source = np.moveaxis(arrays["source"].oindex[slots], 1, 0)[:, valid]
    target = np.moveaxis(arrays["target"].oindex[slots], 1, 0)[:, valid]
    return source.astype(np.float64), target.astype(np.float64)


def test_dataset_fits_and_scores_the_baselines(dataset: Any) -> None:
    _, ds = dataset
    fit = load_baselines(ds.path)
    x, y = _train_pixels(ds.path, "train")
    coef = np.linalg.lstsq(np.vstack([x, np.ones(x.shape[1])]).T, y.T, rcond=None)[0]
    np.testing.assert_allclose(np.asarray(fit.weight), coef[:3].T, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(fit.bias, coef[3], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fit.mean, y.mean(axis=1), rtol=1e-9)
    vx, vy = _train_pixels(ds.path, "val")
    linear = np.abs(np.asarray(fit.weight) @ vx + np.asarray(fit.bias)[:, None] - vy).mean()
    mean = np.abs(np.asarray(fit.mean)[:, None] - vy).mean()
    scores = ds.summary["baselines"]
    assert scores["linear"]["mae"] == pytest.approx(linear, rel=1e-9)
    assert scores["mean"]["mae"] == pytest.approx(mean, rel=1e-9)
    assert scores["linear"]["mae"] < scores["mean"]["mae"]  # the target is mostly linear


def test_linear_anchored_generator_starts_at_the_linear_fit(
    dataset: Any, scene: SceneConfig, tmp_path: Path
) -> None:
    _, ds = dataset
    anchored = TINY.model_copy(update={"linear_anchor": True})
    trained = _bundle(dataset, tmp_path, model=anchored, epochs=0)
    bundle = load_bundle(trained.summary["model"])
    assert bundle.meta.model.linear_anchor and bundle.meta.baselines
    out = tmp_path / "pred.tif"
    predict_scene(bundle, scene, out, PredictConfig(output_format="gtiff"))
    with rasterio.open(out) as p, rasterio.open(scene.source[0]) as s:
        predicted, source = p.read(1), s.read()
    expected = load_baselines(ds.path).predict("linear", source)[0]
    stats = load_stats(ds.path)[0]
    inside = np.all(
        (source >= np.asarray(stats.low)[:, None, None])
        & (source <= np.asarray(stats.high)[:, None, None]),
        axis=0,
    )  # normalization clips source values outside [low, high]
    assert inside.mean() > 0.9
    np.testing.assert_allclose(predicted[inside], expected[inside], rtol=0, atol=1e-2)


def test_small_scene_reports_its_chips_warns_and_still_validates(
    scene: SceneConfig, tmp_path: Path, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    tiles = tile_stage(tmp_path, scene, TILING, DaskConfig(), client=client)
    one_block = DatasetConfig(val_fraction=0.15, split_block_chips=8)  # 8 x 32 px > the scene
    with caplog.at_level(logging.INFO, logger="p2p.data.dataset"):
        record = dataset_stage(tmp_path, [tiles.path], one_block, TILING)
    chips = record.summary["chips"]
    assert chips["val"] >= 1 and chips["train"] >= 1
    assert (
        chips["total"]
        == 16
        == sum(chips[k] for k in ("dropped_nodata", "dropped_straddling", "train", "val"))
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("under ~100 training chips" in w and "tiling.stride" in w for w in warnings)
    assert any("dataset.split_block_chips=8" in w for w in warnings)


def test_cli_evaluate_scores_the_baselines_on_the_same_pixels(
    dataset: Any, scene: SceneConfig, tmp_path: Path
) -> None:
    _, ds = dataset
    trained = _bundle(dataset, tmp_path, epochs=1)
    model = trained.summary["model"]
    out = tmp_path / "pred.tif"
    predict_scene(load_bundle(model), scene, out, PredictConfig(output_format="gtiff"))
    p2p = str(Path(sys.executable).with_name("p2p"))
    args = ["evaluate", "--prediction", str(out), "--target", scene.target[0], "--json"]  # type: ignore[index]
    done = subprocess.run(
        [p2p, *args, "--model", model, "--source", scene.source[0]], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout.strip().splitlines()[-1])
    with rasterio.open(scene.source[0]) as s, rasterio.open(scene.target[0]) as t:
        source, target = s.read().astype(np.float64), t.read(1).astype(np.float64)
    valid = (source != NODATA).all(axis=0)
    fit = load_baselines(ds.path)
    linear = np.abs(fit.predict("linear", source)[0] - target)[valid].mean()
    assert record["baselines"]["linear"]["mae"] == pytest.approx(linear, rel=1e-6)
    assert record["skill"] == pytest.approx(record["overall"]["mae"] / linear, rel=1e-6)
    assert record["data_range_from"] == "model target statistics"
    alone = subprocess.run([p2p, *args, "--model", model], capture_output=True, text=True)
    assert alone.returncode == 1
    assert alone.stderr.strip().splitlines() == [
        "error: --model/--source: give both to score the baselines, or neither"
    ]


def test_warmup_epochs_train_the_generator_on_l1_alone(dataset: Any, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    _, ds = dataset
    chips = ChipDataset(ds.path, "train", augment=True)
    cfg = QUICK.model_copy(update={"warmup_epochs": 1, "epochs": 2})
    train(chips, None, TINY, cfg, tmp_path, load_stats(ds.path)[1])
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["loss_d"] == 0 and lines[0]["loss_g_gan"] == 0 and lines[0]["loss_g_l1"] > 0
    assert lines[1]["loss_d"] > 0 and lines[1]["loss_g_gan"] > 0
    fresh = build_pix2pix(TINY, cfg, 3, 1, torch.device("cpu")).d.state_dict()
    epoch1 = load_checkpoint(tmp_path / "checkpoints" / "epoch_0001.safetensors")
    assert all(torch.equal(fresh[k], v) for k, v in epoch1["discriminator"].items())
    generator = build_pix2pix(TINY, cfg, 3, 1, torch.device("cpu")).g.state_dict()
    assert not all(torch.equal(generator[k], v) for k, v in epoch1["generator"].items())


def test_reports_embed_small_pictures_and_flag_a_model_worse_than_linear(
    dataset: Any, tmp_path: Path
) -> None:
    _, ds = dataset
    trained = _bundle(dataset, tmp_path, epochs=1, preview_chips=2)
    scored = evaluate_stage(tmp_path, trained, ds, PredictConfig())
    for text in (
        train_report(trained.summary),
        evaluate_report(scored.summary, trained.summary["model"]),
    ):
        uris = re.findall(r"\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", text)
        assert len(uris) == 1 and len(text) < 1_000_000
        picture = base64.b64decode(uris[0])
        assert picture[:8] == b"\x89PNG\r\n\x1a\n"
        assert "constant mean" in text and "per-pixel linear regression" in text
    metrics = scored.summary["metrics"]
    worse = {**metrics, "skill": 1.3}
    assert "no better than a per-pixel linear regression" in skill_markdown(worse)
    better = {**metrics, "skill": 0.8}
    assert "no better" not in skill_markdown(better)


def test_bundled_batchnorm_statistics_are_exact_over_the_training_chips(
    dataset: Any, tmp_path: Path
) -> None:
    _, ds = dataset
    trained = _bundle(dataset, tmp_path, epochs=2, augment=False)
    generator = load_bundle(trained.summary["model"]).generator
    norm = next(m for m in generator.modules() if isinstance(m, torch.nn.BatchNorm2d))
    means: list[torch.Tensor] = []
    hook = norm.register_forward_hook(lambda m, i, o: means.append(i[0].mean(dim=(0, 2, 3))))
    chips = ChipDataset(ds.path, "train")
    norm.train()
    with torch.no_grad():
        for x, _, _ in torch.utils.data.DataLoader(chips, batch_size=QUICK.batch_size):
            generator(x)
    hook.remove()
    expected = torch.stack(means).mean(0)
    torch.testing.assert_close(norm.running_mean, expected, rtol=1e-3, atol=1e-4)
    running = _bundle(dataset, tmp_path / "r", epochs=2, augment=False, bn_stats="running")
    other = next(
        m
        for m in load_bundle(running.summary["model"]).generator.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    )
    assert not torch.allclose(other.running_mean, expected, rtol=1e-3, atol=1e-4)


def _val_footprint(ds_path: str, shape: tuple[int, int]) -> np.ndarray:
    """`(H, W)` bool: the union of the validation chips' footprints on the scene."""
    chips = ChipDataset(ds_path, "val")
    index = chipstore.read_index(chips.tile_dirs[0]).set_index("chip")
    inside = np.zeros(shape, dtype=bool)
    for slot in chips.items[:, 1]:
        y0, x0 = int(index.loc[slot, "y0"]), int(index.loc[slot, "x0"])
        inside[y0 : y0 + CHIP, x0 : x0 + CHIP] = True
    return inside


def test_evaluate_scores_the_validation_blocks_as_predict_translates_them(
    dataset: Any, scene: SceneConfig, tmp_path: Path
) -> None:
    _, ds = dataset
    trained = _bundle(dataset, tmp_path, epochs=1)
    config = PredictConfig(output_format="gtiff")
    scored = evaluate_stage(tmp_path, trained, ds, config)
    metrics = scored.summary["metrics"]
    seamless = metrics["seamless"]
    # the same pixels, taken from the whole scene as `predict_scene` writes it
    out = tmp_path / "pred.tif"
    predict_scene(load_bundle(trained.summary["model"]), scene, out, config)
    with (
        rasterio.open(out) as p,
        rasterio.open(scene.source[0]) as s,
        rasterio.open(scene.target[0]) as t,  # type: ignore[index]
    ):
        predicted, source = p.read(1).astype(np.float64), s.read().astype(np.float64)
        target = t.read(1).astype(np.float64)
    mask = _val_footprint(ds.path, target.shape) & (source != NODATA).all(axis=0)
    assert 0 < seamless["pixels"] == mask.sum() < mask.size // 2
    assert seamless["overall"]["mae"] == pytest.approx(
        np.abs(predicted - target)[mask].mean(), rel=1e-6
    )
    linear = load_baselines(ds.path).predict("linear", source)[0]
    assert seamless["baselines"]["linear"]["mae"] == pytest.approx(
        np.abs(linear - target)[mask].mean(), rel=1e-6
    )
    assert seamless["skill"] == pytest.approx(
        seamless["overall"]["mae"] / seamless["baselines"]["linear"]["mae"]
    )
    assert seamless["window"] == {"tile_size": CHIP, "overlap": CHIP // 8, "blend": "cosine",
                                  "tta": True}  # fmt: skip
    # blending and the context of neighbouring windows change the pixels chips see alone
    assert seamless["overall"]["mae"] != pytest.approx(metrics["overall"]["mae"], rel=1e-4)
    assert json.loads((Path(scored.path) / "metrics.json").read_text())["seamless"] == seamless
    # the seam score, strip by strip, equals that of the whole prediction on the same pairs
    with SceneReader(out) as p:
        layout = read_layout(p)
    assert layout is not None
    whole = SeamAccumulator(layout, 1)
    whole.update(0, 0, predicted[None], mask, target[None])
    expected = whole.compute()
    assert seamless["seams"]["pairs"] == expected["pairs"] and expected["pairs"]["boundary"] > 0
    for key in ("seam", "prediction_ratio", "target_ratio", "boundary", "interior"):
        assert seamless["seams"]["bands"][0][key] == pytest.approx(expected["bands"][0][key])
    assert seamless["spectral"] == {"sam": None, "indices": []}  # one band: no spectral angle
    report = evaluate_report(scored.summary, trained.summary["model"])
    assert "Validation blocks through the prediction engine" in report
    assert f"seam score {seamless['seams']['seam']:.3f}" in report
    assert f"{seamless['pixels']} pixels" in report
    # the window settings key the stage: another overlap scores anew
    other = evaluate_stage(tmp_path, trained, ds, PredictConfig(overlap=0))
    assert (
        other.key != scored.key and other.summary["metrics"]["seamless"]["window"]["overlap"] == 0
    )


def test_test_time_augmentation_averages_the_eight_symmetries(
    dataset: Any, scene: SceneConfig, tmp_path: Path
) -> None:
    trained = _bundle(dataset, tmp_path, epochs=1)
    bundle = load_bundle(trained.summary["model"])
    one_window = {"tile_size": 128, "overlap": 0, "blend": "none", "output_format": "gtiff"}
    assert PredictConfig().tta  # on by default
    with rasterio.open(scene.source[0]) as s:
        source, profile = s.read(), s.profile
    turned_back = []
    for k in range(8):  # each symmetry of the scene predicted alone, then turned back
        path = tmp_path / f"turned{k}.tif"
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(dihedral(torch.from_numpy(source), k).numpy())
        out = tmp_path / f"pred{k}.tif"
        alone = PredictConfig(**one_window, tta=False)
        predict_scene(bundle, SceneConfig(source=[str(path)]), out, alone)
        with rasterio.open(out) as p:
            turned_back.append(undo_dihedral(torch.from_numpy(p.read(1)), k).numpy())
    out = tmp_path / "tta.tif"
    predict_scene(bundle, scene, out, PredictConfig(**one_window))
    with rasterio.open(out) as p:
        averaged = p.read(1)
        assert json.loads(p.tags()["P2P_SETTINGS"])["tta"] is True
    valid = (source != NODATA).all(axis=0)
    expected = np.mean(turned_back, axis=0)
    np.testing.assert_allclose(averaged[valid], expected[valid], rtol=1e-4, atol=1e-3)
    assert not np.allclose(averaged[valid], turned_back[0][valid], rtol=1e-4, atol=1e-3)


def test_weight_average_is_validated_bundled_and_resumed(dataset: Any, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    _, ds = dataset
    stats = load_stats(ds.path)[1]
    cfg = QUICK.model_copy(update={"epochs": 2, "ema_epochs": 1.0, "keep": "last"})

    class Killed(Exception):
        pass

    def kill_in_epoch_2(p: TrainProgress) -> None:
        if p.epoch == 2:
            raise Killed

    def run(folder: Path, progress: Any = None) -> dict[str, Any]:
        chips = ChipDataset(ds.path, "train", augment=True)
        val = ChipDataset(ds.path, "val")
        result = train(chips, val, TINY, cfg, folder, stats, progress=progress)
        return load_checkpoint(result.checkpoint) | {"result": result}

    whole = run(tmp_path / "whole")
    raw, average = whole["generator"], whole["generator_ema"]
    assert any(not torch.equal(raw[k], average[k]) for k in raw)
    bundled = whole["result"].load_generator().state_dict()
    assert all(torch.equal(bundled[k], average[k]) for k in average)
    # the validation line is the average's: it scores what is bundled
    chips = ChipDataset(ds.path, "val")
    generator = whole["result"].load_generator()
    with torch.no_grad():
        mae = score_batches(torch.utils.data.DataLoader(chips, batch_size=4), generator, stats)
    assert whole["result"].metrics["overall"]["mae"] == pytest.approx(
        mae["overall"]["mae"], rel=1e-5
    )
    with pytest.raises(Killed):  # killed in epoch 2, resumed from epoch 1: the same average
        run(tmp_path / "split", kill_in_epoch_2)
    resumed = run(tmp_path / "split")
    assert all(torch.equal(resumed["generator_ema"][k], average[k]) for k in average)
