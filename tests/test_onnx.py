"""ONNX export and the onnxruntime runtime: same engine, same pixels as torch, clean refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from p2p.bands.normalization import BandStats, normalize
from p2p.bands.symmetry import dihedral, undo_dihedral
from p2p.core.config import DaskConfig, PredictConfig, SceneConfig
from p2p.core.errors import BundleError
from p2p.demo import DemoScenes, demo_config, write_demo_scenes
from p2p.infer.inference import predict_scene
from p2p.infer.onnxbundle import export_onnx
from p2p.infer.onnxrun import OnnxTranslator, intra_op_threads, onnx_model
from p2p.infer.runtime import open_translator
from p2p.infer.tta import DihedralMean
from p2p.model.bundle import ONNX, BundleMeta, load_bundle, write_bundle
from p2p.model.meta import read_ref
from p2p.model.networks import UNetGenerator
from p2p.stages.dataset import run as dataset_stage
from p2p.stages.tile import run as tile_stage
from p2p.stages.train import run as train_stage
from tests.faultkit import assert_one_line_error
from tests.rasters import write_geotiff

P2P = str(Path(sys.executable).parent / "p2p")


def _p2p(*args: object) -> subprocess.CompletedProcess[str]:
    """The installed `p2p` console script, in a fresh process."""
    return subprocess.run([P2P, *map(str, args)], capture_output=True, text=True, timeout=300)


STATS = BandStats(mean=(0.3, -0.2), std=(1.0, 1.0), low=(-2.0, -3.0), high=(2.0, 1.0))


def _tiny_bundle(folder: Path, norm: str = "batch") -> Path:
    """A 3-level U-Net whose BatchNorm running statistics are not the identity."""
    torch.manual_seed(1)
    g = UNetGenerator(2, 1, num_downs=3, ngf=4, norm=norm, dropout=0.0)
    for m in g.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    meta = BundleMeta(
        model={"num_downs": 3, "ngf": 4, "norm": norm, "dropout": 0.0},
        in_channels=2,
        out_channels=1,
        source_bands=("a", "b"),
        target_bands=("t",),
        source_stats=STATS.to_dict(),
        target_stats=BandStats((0.0,), (1.0,), (-1.0,), (1.0,)).to_dict(),
        target_dtype="float32",
        target_nodata=None,
        source_nodata=None,
        chip_size=32,
    )
    return write_bundle(folder, g, meta)


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_export_takes_any_batch_and_multiple_of_the_input_size(tmp_path: Path, norm: str) -> None:
    model = _tiny_bundle(tmp_path / "model", norm)
    weights_before = (model / "weights.safetensors").read_bytes()
    path = export_onnx(model)
    bundle = load_bundle(model)
    record = bundle.meta.onnx
    assert path == model / ONNX and onnx_model(bundle) == path
    assert record["weights_sha256"] == bundle.weights_hash and record["multiple"] == 8
    assert (model / "weights.safetensors").read_bytes() == weights_before
    onnx = open_translator(bundle, PredictConfig(runtime="onnx", device="cpu", tta=False))
    rng = np.random.default_rng(0)
    for shape in [(1, 2, 8, 8), (3, 2, 24, 40), (2, 2, 64, 16)]:
        x = rng.uniform(-1, 1, shape).astype(np.float32)
        with torch.no_grad():
            expected = bundle.generator(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(onnx(x), expected, atol=1e-5)


def test_onnx_runs_on_the_thread_budget_with_the_same_pixels_on_any_count(tmp_path: Path) -> None:
    """onnxruntime's intra-op threads follow the process's budget, which sets torch's count
    (`apply_budget`), as the torch path does (its default is every physical core), and its
    pixels do not depend on the count or the batch."""
    model = _tiny_bundle(tmp_path / "model")
    export_onnx(model)
    bundle = load_bundle(model)
    config = PredictConfig(runtime="onnx", device="cpu", tta=False)
    x = np.random.default_rng(0).uniform(-1, 1, (5, 2, 64, 64)).astype(np.float32)
    before = torch.get_num_threads()
    outputs = []
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            onnx = open_translator(bundle, config)
            assert isinstance(onnx, OnnxTranslator)
            assert onnx.session.get_session_options().intra_op_num_threads == threads
            outputs += [onnx(x), np.concatenate([onnx(x[:2]), onnx(x[2:])])]
    finally:
        torch.set_num_threads(before)
    for y in outputs[1:]:
        assert np.array_equal(y, outputs[0])


def test_stale_missing_or_altered_onnx_is_refused(tmp_path: Path) -> None:
    model = _tiny_bundle(tmp_path / "model")
    with pytest.raises(BundleError, match="has no ONNX model; run `p2p export"):
        onnx_model(load_bundle(model))
    export_onnx(model)
    data = bytearray((model / ONNX).read_bytes())
    data[-100] ^= 0xFF
    (model / ONNX).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match its checksum"):
        onnx_model(load_bundle(model))
    (model / ONNX).unlink()
    with pytest.raises(BundleError, match="missing"):
        onnx_model(load_bundle(model))
    # retrained weights under an old record: the export belongs to other weights
    export_onnx(model)
    meta = json.loads((model / "model.json").read_text())
    meta["onnx"]["weights_sha256"] = "0" * 64
    (model / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="exported from other weights"):
        onnx_model(load_bundle(model))


def test_cli_onnx_without_export_is_one_error_line_and_no_output(tmp_path: Path) -> None:
    model = _tiny_bundle(tmp_path / "model")
    scene = write_geotiff(tmp_path / "s.tif", np.ones((2, 40, 40), np.float32))
    out = tmp_path / "out.tif"
    args = ["predict", "--model", model, "--input", scene, "--output", out, "--runtime", "onnx"]
    done = _p2p(*args)
    assert_one_line_error(done.returncode, done.stderr, model, "p2p export")
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    done = _p2p("export", "--model", tmp_path / "nope")
    assert_one_line_error(done.returncode, done.stderr, tmp_path / "nope")


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DemoScenes]:
    """The demo's model (its architecture and data) trained for one epoch."""
    data = write_demo_scenes(tmp_path_factory.mktemp("scenes"), scene_size=128)
    ws = tmp_path_factory.mktemp("ws")
    cfg = demo_config(ws, data.train)
    train_cfg = cfg.train.model_copy(update={"epochs": 1, "epochs_decay": 0, "preview_chips": 0})
    one = DaskConfig(n_workers=1, threads_per_worker=1)
    tiles = [tile_stage(ws, s, cfg.tiling, one) for s in data.train]
    dataset = dataset_stage(ws, [t.path for t in tiles], cfg.dataset, cfg.tiling)
    trained = train_stage(ws, dataset, cfg.model, train_cfg)
    return Path(trained.summary["model"]), data


def test_onnx_runtime_matches_torch_on_the_demo_model(
    demo_model: tuple[Path, DemoScenes], tmp_path: Path
) -> None:
    model, data = demo_model
    done = _p2p("export", "--model", model, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["onnx"] == str(model / ONNX)
    bundle = load_bundle(model)

    # the two runtimes on the same normalized windows: within 1e-4 in normalized units
    with rasterio.open(data.held_out[0].source[0]) as src:
        image = src.read().astype(np.float32)
    x = normalize(image, BandStats.from_dict(bundle.meta.source_stats), band_axis=0)
    windows = np.stack([x[:, :64, :64], x[:, 64:, 64:], x[:, :64, 64:]])
    torch_out = open_translator(bundle, PredictConfig(runtime="torch", device="cpu"))(windows)
    onnx_out = open_translator(bundle, PredictConfig(runtime="onnx", device="cpu"))(windows)
    assert np.abs(onnx_out - torch_out).max() <= 1e-4

    # the whole engine through the CLI: the target dtype's bytes agree on >= 99.9 % of pixels
    outputs = {}
    for runtime in ("torch", "onnx"):
        out = tmp_path / f"{runtime}.tif"
        args = ["predict", "--model", model, "--input", data.held_out[0].source[0],
                "--output", out, "--tile-size", 128, "--overlap", 16, "--device", "cpu",
                "--format", "gtiff", "--runtime", runtime]  # fmt: skip
        done = _p2p(*args)
        assert done.returncode == 0, done.stderr
        with rasterio.open(out) as dst:
            outputs[runtime] = dst.read()
    assert outputs["torch"].dtype == np.uint8
    same = np.mean(outputs["torch"] == outputs["onnx"])
    assert same >= 0.999, f"only {same:.5f} of the pixels agree"
    assert np.abs(outputs["torch"].astype(int) - outputs["onnx"]).max() <= 1


def test_predict_scene_runs_the_onnx_runtime_in_the_same_engine(tmp_path: Path) -> None:
    model = _tiny_bundle(tmp_path / "model")
    export_onnx(model)
    bundle = load_bundle(model)
    rng = np.random.default_rng(3)
    pixels = rng.normal(0, 1, (2, 70, 90)).astype(np.float32)
    scene = SceneConfig(source=[str(write_geotiff(tmp_path / "s.tif", pixels))])
    cfg = PredictConfig(tile_size=32, overlap=8, batch_size=3, output_format="gtiff", device="cpu")
    a = predict_scene(bundle, scene, tmp_path / "torch.tif", cfg)
    onnx = cfg.model_copy(update={"runtime": "onnx"})
    b = predict_scene(bundle, scene, tmp_path / "onnx.tif", onnx)
    with rasterio.open(a.output) as ta, rasterio.open(b.output) as tb:
        np.testing.assert_allclose(tb.read(), ta.read(), atol=1e-5)
        assert json.loads(tb.tags()["P2P_SETTINGS"])["runtime"] == "onnx"


def test_a_bundle_ref_predicts_as_the_loaded_bundle_on_either_runtime(tmp_path: Path) -> None:
    """The predict stage hands the engine a `BundleRef`: the torch runtime loads its weights,
    the ONNX one runs ``model.onnx`` without them; the pixels are the loaded bundle's."""
    model = _tiny_bundle(tmp_path / "model")
    export_onnx(model)
    rng = np.random.default_rng(4)
    pixels = rng.normal(0, 1, (2, 50, 70)).astype(np.float32)
    scene = SceneConfig(source=[str(write_geotiff(tmp_path / "s.tif", pixels))])
    cfg = PredictConfig(tile_size=32, overlap=8, output_format="gtiff", device="cpu", tta=False)
    for runtime in ("torch", "onnx"):
        config = cfg.model_copy(update={"runtime": runtime})
        a = predict_scene(load_bundle(model), scene, tmp_path / f"{runtime}-a.tif", config)
        b = predict_scene(read_ref(model), scene, tmp_path / f"{runtime}-b.tif", config)
        with rasterio.open(a.output) as ta, rasterio.open(b.output) as tb:
            assert np.array_equal(ta.read(), tb.read())
    # weights replaced after the ref was read (and keyed the prediction): refused, no output
    ref = read_ref(model)
    _tiny_bundle(model, "instance")
    torch_cfg = cfg.model_copy(update={"runtime": "torch"})
    with pytest.raises(BundleError, match="weights changed while predicting"):
        predict_scene(ref, scene, tmp_path / "stale.tif", torch_cfg)
    assert not list(tmp_path.glob("*stale*"))


def test_onnx_threads_follow_the_budget_without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without torch loaded, the session takes the count `apply_budget` wrote for OpenMP."""
    monkeypatch.delitem(sys.modules, "p2p.infer.cpuforward", raising=False)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert intra_op_threads() == 3


@pytest.mark.parametrize("tta", [False, True])
def test_cli_onnx_predict_never_imports_torch(tmp_path: Path, tta: bool) -> None:
    """`p2p predict --runtime onnx` starts without torch's 1.0–1.5 s import, with test-time
    augmentation (turned in numpy) or without: the installed CLI's own import log
    (PYTHONPROFILEIMPORTTIME) holds no torch, and its output is the in-process prediction's."""
    model = _tiny_bundle(tmp_path / "model")
    export_onnx(model)
    pixels = np.random.default_rng(5).normal(0, 1, (2, 60, 60)).astype(np.float32)
    source = write_geotiff(tmp_path / "s.tif", pixels)
    out = tmp_path / "out.tif"
    args = ["predict", "--model", model, "--input", source, "--output", out, "--runtime", "onnx",
            "--tta" if tta else "--no-tta", "--tile-size", 32, "--overlap", 8, "--device", "cpu",
            "--format", "gtiff", "--workspace", tmp_path / "ws"]  # fmt: skip
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    done = subprocess.run(
        [P2P, *map(str, args)], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "onnxruntime" in imported and "rasterio" in imported
    assert not {name for name in imported if name.split(".")[0] == "torch"}
    config = PredictConfig(
        tile_size=32, overlap=8, output_format="gtiff", device="cpu", tta=tta, runtime="onnx"
    )
    expected = predict_scene(
        read_ref(model), SceneConfig(source=[str(source)]), tmp_path / "in.tif", config
    )
    with rasterio.open(out) as got, rasterio.open(expected.output) as want:
        assert np.array_equal(got.read(), want.read())


def test_onnx_tta_in_numpy_is_the_torch_turned_mean(tmp_path: Path) -> None:
    """The symmetries turned in numpy around onnxruntime give, bit for bit, the mean and
    variance of the same outputs turned as torch tensors (as before they were). The spread is
    numpy's square root, which is correctly rounded; torch's float32 CPU `sqrt` is not (it
    is one unit off on about a sixth of values)."""
    model = _tiny_bundle(tmp_path / "model")
    export_onnx(model)
    onnx = open_translator(read_ref(model), PredictConfig(runtime="onnx", tta=False))
    x = np.random.default_rng(6).uniform(-1, 1, (3, 2, 32, 32)).astype(np.float32)
    outputs = [
        undo_dihedral(torch.from_numpy(onnx(dihedral(torch.from_numpy(x), k).numpy())), k)
        for k in range(8)
    ]
    mean = sum(outputs[1:], outputs[0]) / 8
    var = sum(((y - mean) ** 2 for y in outputs), torch.zeros_like(mean)) / 8
    got = DihedralMean(onnx, spread=True)(x)
    exact = np.sqrt(var.numpy().astype(np.float64)).astype(np.float32)
    assert np.array_equal(got, np.concatenate([mean.numpy(), exact], axis=1))
    assert np.array_equal(DihedralMean(onnx)(x), mean.numpy())
