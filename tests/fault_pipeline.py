"""A tiny end-to-end run (tile → dataset → train → predict → mosaic) that can SIGKILL itself.

Run as ``python -m tests.fault_pipeline WORKSPACE DATA [KILL_ON NTH]``. With KILL_ON (a
regular expression), the process kills itself with SIGKILL just before the NTH `os.replace`
whose destination matches it: the new file is complete under its temporary name and the old
state still in place, the worst moment of an atomic write; for per-block markers, per-epoch
checkpoints or per-strip state files it is also a point in the middle of a stage. Every
artifact write goes through `os.replace`, so one hook reaches every stage. Prints a JSON
record of the artifacts last.

`write_data` builds the inputs once; the stage calls use the library directly (no Prefect) with
an in-process Dask client, so the hook sees every write.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from tests.rasters import write_geotiff

TILING = {"chip_size": 32, "stride": 16, "block_chips": 2, "min_valid_fraction": 0.5}
MODEL = {"num_downs": 2, "ngf": 4, "ndf": 4, "n_layers_d": 1, "dropout": 0.0}
TRAIN = {"epochs": 2, "epochs_decay": 1, "batch_size": 4, "device": "cpu", "preview_chips": 1}
PREDICT = {"tile_size": 32, "overlap": 4, "batch_size": 4, "device": "cpu", "output_format": "cog"}
UTM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 1000000.0)


def write_data(folder: Path) -> dict[str, Any]:
    """A 64 px training pair and two tall, overlapping scenes to predict (600 x 40 px)."""
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:600, 0:80]
    bands = np.stack([100 + 80 * np.sin(xx / 6.0) * np.cos(yy / 9.0), 50 + 0.3 * yy + xx])
    src = (bands + 1).round().astype(np.uint16)
    tgt = (3 * bands[0] + bands[1]).round().astype(np.uint16)[None] + 1
    write_geotiff(folder / "src.tif", src[:, :64, :64], transform=UTM, nodata=0, blocksize=16)
    write_geotiff(folder / "tgt.tif", tgt[:, :64, :64], transform=UTM, nodata=0, blocksize=16)
    write_geotiff(folder / "a.tif", src[:, :, :48], transform=UTM, nodata=0, blocksize=16)
    shifted = UTM @ Affine.translation(32, 0)
    write_geotiff(folder / "b.tif", src[:, :, 32:], transform=shifted, nodata=0, blocksize=16)
    return {name: str(folder / f"{name}.tif") for name in ("src", "tgt", "a", "b")}


def install_kill_hook(kill_on: str, nth: int) -> None:
    """SIGKILL this process just before the `nth` os.replace onto a path matching `kill_on`."""
    real = os.replace
    pattern = re.compile(kill_on)
    seen = 0

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal seen
        if pattern.search(str(dst)):
            seen += 1
            if seen == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst, *args, **kwargs)

    os.replace = replace  # type: ignore[assignment]


def run(workspace: str, data: dict[str, str]) -> dict[str, Any]:
    """All stages, each cached/resumed by its own stage key."""
    import torch
    from distributed import Client

    from p2p.core.config import (
        DaskConfig,
        DatasetConfig,
        ModelConfig,
        MosaicConfig,
        PredictConfig,
        SceneConfig,
        TilingConfig,
        TrainConfig,
    )
    from p2p.stages.dataset import run as dataset_stage
    from p2p.stages.mosaic import run as mosaic_stage
    from p2p.stages.predict import run as predict_stage
    from p2p.stages.tile import run as tile_stage
    from p2p.stages.train import run as train_stage

    torch.set_num_threads(1)
    tiling = TilingConfig(**TILING)
    scene = SceneConfig(source=data["src"], target=data["tgt"])
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as c:
        tile = tile_stage(workspace, scene, tiling, DaskConfig(), client=c)
    dataset = dataset_stage(
        workspace, [tile.path], DatasetConfig(val_fraction=0.25, split_block_chips=1), tiling
    )
    train = train_stage(workspace, dataset, ModelConfig(**MODEL), TrainConfig(**TRAIN))
    config = PredictConfig(**PREDICT)
    model = train.summary["model"]
    preds = [predict_stage(workspace, model, SceneConfig(source=data[s]), config) for s in "ab"]
    outputs = [p.summary["output"] for p in preds]
    mosaic = mosaic_stage(workspace, outputs, MosaicConfig(), "cog")
    records = [tile, dataset, train, *preds, mosaic]
    return {
        "tile": tile.path,
        "dataset": dataset.path,
        "train": train.path,
        "model": model,
        "predictions": outputs,
        "mosaic": mosaic.summary["output"],
        "cached": [r.cached for r in records],
    }


if __name__ == "__main__":
    ws, data_json = sys.argv[1], sys.argv[2]
    if len(sys.argv) > 3:
        install_kill_hook(sys.argv[3], int(sys.argv[4]))
    print(json.dumps(run(ws, json.loads(data_json))))
