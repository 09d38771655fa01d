"""Settings that change bytes or float rounding are in their stage's key; speed-only ones are
not; and `p2p predict --compress` writes the codec it names with the same pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio

from p2p.core.cache import StageRecord
from p2p.core.config import (
    ModelConfig,
    MosaicConfig,
    PipelineConfig,
    PredictConfig,
    SceneConfig,
    TrainConfig,
)
from p2p.stages import mosaic, predict, train
from tests.faultkit import PREDICT_OPTS, cli, write_scene, write_tiny_bundle

DATASET = StageRecord(stage="dataset", key="ab" * 32, path="/nowhere", cached=True, seconds=0)


def test_codec_is_in_the_predict_and_mosaic_keys(tmp_path: Path) -> None:
    model = write_tiny_bundle(tmp_path / "model")
    scene = SceneConfig(source=str(write_scene(tmp_path / "s.tif")))
    keys = {
        c: predict.key_parts(model, scene, PredictConfig(compress=c)).key
        for c in ("deflate", "zstd")
    }
    assert keys["deflate"] != keys["zstd"]
    paths = [str(tmp_path / "s.tif")]
    deflate = mosaic.key_parts(paths, MosaicConfig(), "cog")
    assert deflate == mosaic.key_parts(paths, MosaicConfig(), "cog", "deflate")
    assert deflate.key != mosaic.key_parts(paths, MosaicConfig(), "cog", "none").key


def test_compile_is_in_the_train_key_and_threads_in_none() -> None:
    model = ModelConfig()
    plain = train.key_parts(DATASET, model, TrainConfig())
    assert "compile" not in plain.config["train"]  # keys made before the setting still hold
    assert plain.key != train.key_parts(DATASET, model, TrainConfig(compile=True)).key
    assert plain.key == train.key_parts(DATASET, model, TrainConfig(num_workers=4)).key
    cfg = PipelineConfig(threads=3)  # the budget is a top-level setting no stage reads
    assert "threads" not in str(train.key_parts(DATASET, cfg.model, cfg.train).config)


def test_p2p_predict_writes_the_codec_it_is_given(tmp_path: Path) -> None:
    model = write_tiny_bundle(tmp_path / "model")
    scene = write_scene(tmp_path / "scene.tif", height=70, width=90)
    pixels = {}
    for codec in ("deflate", "zstd", "none"):
        out = tmp_path / f"{codec}.tif"
        args = ["predict", "--model", model, "--input", scene, "--output", out, *PREDICT_OPTS]
        done = cli([*args, "--compress", codec, "--json"])
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout.strip().splitlines()[-1])["output"] == str(out)
        with rasterio.open(out) as ds:
            assert (ds.compression.value.lower() if ds.compression else "none") == codec
            pixels[codec] = ds.read()
    np.testing.assert_array_equal(pixels["zstd"], pixels["deflate"])
    np.testing.assert_array_equal(pixels["none"], pixels["deflate"])
    bad = cli(["predict", "--model", model, "--input", scene, "--output", tmp_path / "x.tif",
               "--compress", "jpeg"])  # fmt: skip
    assert bad.returncode == 1 and bad.stderr.startswith("error: --compress"), bad.stderr
