"""Scenes, bundles and outputs in a bucket of a real (local) S3 server: the same chips, the
same prediction bytes and the same one-line errors as with local files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
import torch
from distributed import Client, LocalCluster

from p2p.core.config import BatchPredictConfig, DaskConfig, SceneConfig, StacRef, TilingConfig
from p2p.core.errors import BundleError
from p2p.demo import demo_config, write_demo_scenes
from p2p.model.bundle import load_bundle, write_bundle
from p2p.model.networks import UNetGenerator
from p2p.stages.tile import run as tile_stage
from tests.faultkit import assert_one_line_error, cli
from tests.test_inference import NUM_DOWNS, _meta, _source
from tests.test_stac import make_item, write_json
from tests.test_tiling import make_pair, store_arrays

P2P = str(Path(sys.executable).with_name("p2p"))


def _generator() -> UNetGenerator:
    torch.manual_seed(0)
    return UNetGenerator(2, 1, num_downs=NUM_DOWNS, ngf=4, norm="batch", dropout=0.0).eval()


@pytest.mark.slow
def test_scenes_in_a_bucket_tile_into_the_same_chips_on_worker_processes(
    s3: Any, tmp_path: Path
) -> None:
    local = make_pair(tmp_path)
    remote = SceneConfig(
        source=[s3.put(local.source[0], s3.url("pairs/src.tif"))],
        target=[s3.put(local.target[0], s3.url("pairs/tgt.tif"))],  # type: ignore[index]
        nodata=0,
    )
    tiling = TilingConfig(chip_size=32, stride=32, block_chips=2, min_valid_fraction=0.5)
    dask = DaskConfig(n_workers=2, threads_per_worker=1)
    # worker processes: each opens the objects itself, with the environment it inherited
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        from_bucket = tile_stage(tmp_path / "ws_s3", remote, tiling, dask, client=client)
    from_disk = tile_stage(tmp_path / "ws_local", local, tiling, dask)
    a, b = store_arrays(from_bucket.path), store_arrays(from_disk.path)
    assert a.keys() == b.keys() and a["source"].shape[0] > 0
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_bundle_round_trips_through_a_bucket_manifest_last(s3: Any) -> None:
    url = s3.url("models/m1")
    generator = _generator()
    assert write_bundle(url, generator, _meta("uint16", None)) == url
    assert s3.keys(s3.bucket, "models/") == [
        "models/m1/model.json",
        "models/m1/weights.safetensors",
    ]
    upload_order = [line for line in s3.log_lines() if '"PUT /' + s3.bucket + "/models" in line]
    assert "weights.safetensors" in upload_order[0] and "model.json" in upload_order[-1]
    bundle = load_bundle(url)
    assert bundle.path == url and bundle.meta == _meta("uint16", None)
    for name, value in generator.state_dict().items():
        torch.testing.assert_close(bundle.generator.state_dict()[name], value)
    with pytest.raises(BundleError, match="missing: no p2p bundle here") as err:
        load_bundle(s3.url("models/none"))
    assert err.value.where == s3.url("models/none/model.json")


BASE = ["predict", "--tile-size", "32", "--overlap", "4", "--json"]


def test_cli_predicts_from_and_to_a_bucket_with_the_local_bytes(s3: Any, tmp_path: Path) -> None:
    write_bundle(tmp_path / "model", _generator(), _meta("uint16", None))
    model = str(write_bundle(s3.url("model"), _generator(), _meta("uint16", None)))
    src, _ = _source(tmp_path / "scene.tif", 70, 90)
    scene = s3.put(src, s3.url("in/scene.tif"))
    args = ["--model", str(tmp_path / "model"), "--input", str(src), "--output"]
    local = cli([*BASE, *args, tmp_path / "o.tif"])  # the installed p2p
    assert local.returncode == 0, local.stderr
    out, ws = s3.url("out/scene.tif"), str(tmp_path / "ws")
    remote = subprocess.run(  # the installed command, as a user runs it
        [P2P, *BASE, "--model", model, "--input", scene, "--output", out, "--workspace", ws],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert remote.returncode == 0, remote.stderr
    assert json.loads(remote.stdout.splitlines()[-1])["output"] == out
    assert s3.get(out) == (tmp_path / "o.tif").read_bytes()
    assert s3.keys(s3.bucket, "out/") == ["out/scene.tif"]


def _error_line(args: list[str]) -> str:
    """The error of the installed `p2p` (what users run): exit 1, the whole stderr one line."""
    result = cli([*BASE, *args])
    assert result.returncode == 1
    return assert_one_line_error(result.returncode, result.stderr)


def test_cli_names_the_url_and_what_is_missing(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = str(write_bundle(s3.url("model"), _generator(), _meta("uint16", None)))
    scene = s3.put(_source(tmp_path / "scene.tif", 40, 40)[0], s3.url("in/scene.tif"))
    out = s3.url("out/x.tif")
    none = s3.url("in/none.tif")
    assert _error_line(["--model", model, "--input", none, "--output", out]) == (
        f"error: {none}: no such key 'in/none.tif' in bucket {s3.bucket!r}"
    )
    nobucket = "s3://no-such-bucket-p2p/o.tif"
    assert _error_line(["--model", model, "--input", scene, "--output", nobucket]) == (
        f"error: {nobucket}: no such bucket 'no-such-bucket-p2p'"
    )
    assert _error_line(["--model", s3.url("nomodel"), "--input", scene, "--output", out]) == (
        f"error: {s3.url('nomodel/model.json')}: missing: no p2p bundle here "
        f"(no such key 'nomodel/model.json' in bucket {s3.bucket!r})"
    )
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    local_out = str(tmp_path / "o.tif")
    line = _error_line(["--model", model, "--input", scene, "--output", local_out])
    assert line.startswith(f"error: {s3.url('model/model.json')}: no AWS credentials found")
    assert s3.keys(s3.bucket, "out/") == [] and not list(tmp_path.glob("*o.tif*"))


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_training_and_batch_prediction_with_data_model_and_output_in_a_bucket(
    s3: Any, tmp_path: Path
) -> None:
    from flows.batch_predict import batch_predict
    from flows.train_pipeline import train_pipeline

    data = write_demo_scenes(tmp_path / "data", scene_size=96)

    def up(path: str) -> str:
        return str(s3.put(path, s3.url(f"scenes/{Path(path).name}")))

    scenes = [
        s.model_copy(
            update={"source": [up(p) for p in s.source], "target": [up(p) for p in s.target or []]}
        )
        for s in data.train
    ]
    # the workspace in the bucket too: every stage folder is a prefix of objects there
    config = demo_config(tmp_path / "ws", scenes, quick=True).model_copy(
        update={"workspace": s3.url("ws")}
    )
    record = train_pipeline(config)
    assert record["metrics"]["overall"]["mae"] > 0
    assert record["model"].startswith(s3.url("ws/train/"))
    stages = {
        key.split("/")[1] for key in s3.keys(s3.bucket, "ws/") if key.endswith("manifest.json")
    }
    assert stages == {"tile", "dataset", "train", "evaluate"}
    for name in ("model.json", "weights.safetensors"):
        s3.client().copy_object(
            Bucket=s3.bucket,
            Key=f"models/demo/{name}",
            CopySource={"Bucket": s3.bucket, "Key": f"{record['model'][len(s3.url('')) :]}/{name}"},
        )
    for scene in data.held_out:
        up(scene.source[0])

    batch = BatchPredictConfig(
        workspace=s3.url("ws"),
        model=s3.url("models/demo"),
        scenes=[s3.url("scenes/heldout_*_image.tif")],
        output=s3.url("out/mosaic.tif"),
        predict=config.predict,
    )
    result = batch_predict(batch)
    assert result["scenes"] == ["heldout_a_image", "heldout_b_image"]
    # the same scenes as a local STAC ItemCollection: the same mosaic, byte for byte
    items = [make_item(Path(s.source[0]).stem, {"image": s.source[0]}) for s in data.held_out]
    collection = write_json(tmp_path / "heldout.json", pystac.ItemCollection(items))
    local = batch.model_copy(
        update={
            "model": record["model"],
            "workspace": str(tmp_path / "ws"),
            "scenes": [],
            "items": [StacRef(stac=str(collection), assets=["image"])],
            "output": str(tmp_path / "mosaic.tif"),
        }
    )
    assert batch_predict(local)["scenes"] == ["heldout_a_image", "heldout_b_image"]
    assert s3.get(s3.url("out/mosaic.tif")) == (tmp_path / "mosaic.tif").read_bytes()
