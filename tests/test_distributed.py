"""Data-parallel training on the CPU: torchrun, gloo, two real processes."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from p2p.bands.normalization import BandStats
from p2p.core.cache import StageRecord
from p2p.core.config import DaskConfig, ModelConfig, PipelineConfig, TrainConfig
from p2p.core.errors import StageError
from p2p.demo import demo_config, write_demo_scenes
from p2p.model import distributed
from p2p.model.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from p2p.model.networks import PatchGANDiscriminator, UNetGenerator, build_generator
from p2p.model.pix2pix import build_pix2pix
from p2p.model.training import train
from p2p.stages.dataset import run as dataset_stage
from p2p.stages.tile import run as tile_stage
from p2p.stages.train import key_parts
from p2p.stages.train import run as train_stage
from p2p.stages.train_node import join_training
from p2p.stages.train_worker import train_on_ranks
from tests.ddp_probe import chips, configs

ROOT = Path(__file__).resolve().parents[1]


def _launch(out_dir: Path, mode: str, batch: int) -> None:
    """Two ranks of tests/ddp_probe.py under torchrun, as the train stage launches them."""
    out_dir.mkdir(parents=True)
    _, cfg = configs("instance", batch, 2)
    os.chdir(ROOT)  # `-m tests.ddp_probe` resolves from the repository root
    args = [str(out_dir), mode, str(batch)]
    distributed.launch(cfg, "probe", "tests.ddp_probe", args, out_dir / "ddp.log")


def _networks(out_dir: Path) -> tuple[UNetGenerator, PatchGANDiscriminator]:
    """The networks of the newest checkpoint in `out_dir`, in eval mode."""
    model_cfg, _ = configs("instance", 1, 1)
    _, newest = list_checkpoints(out_dir / "checkpoints")[0]
    state = load_checkpoint(newest)
    g = build_generator(model_cfg, 2, 1)
    d = PatchGANDiscriminator(3, model_cfg.ndf, model_cfg.n_layers_d, "instance")
    g.load_state_dict(state["generator"])
    d.load_state_dict(state["discriminator"])
    return g.eval(), d.eval()


def _normalized_away(net: torch.nn.Module) -> set[str]:
    """Biases of convolutions that an InstanceNorm follows: the norm subtracts them again, so
    their gradient is zero up to float noise, and Adam turns that noise into lr-sized steps."""
    names = set()
    for prefix, module in net.named_modules():
        if isinstance(module, torch.nn.Sequential):
            layers = list(module.named_children())
            for (name, layer), (_, after) in itertools.pairwise(layers):
                if isinstance(after, torch.nn.InstanceNorm2d) and layer.bias is not None:
                    names.add(f"{prefix}.{name}.bias".lstrip("."))
    return names


def test_two_ranks_of_batch_2_step_like_one_process_of_batch_4(tmp_path: Path) -> None:
    model_cfg, cfg = configs("instance", 4, 1)
    target = BandStats((0.0,), (1.0,), (-1.0,), (1.0,))
    train(chips(), None, model_cfg, cfg, tmp_path / "one", target)
    _launch(tmp_path / "two", "train", 2)
    start = build_pix2pix(model_cfg, cfg, 2, 1, torch.device("cpu")).g.state_dict()
    nets_one, nets_two = _networks(tmp_path / "one"), _networks(tmp_path / "two")
    moved = nets_one[0].state_dict()
    assert max(float((moved[k] - v).abs().max()) for k, v in start.items()) > 1e-3
    for one, two in zip(nets_one, nets_two, strict=True):  # eight Adam steps moved the weights
        a, b = one.state_dict(), two.state_dict()
        inert = _normalized_away(one)
        assert inert and inert < a.keys()
        for k in a.keys() - inert:  # ... the same way in both runs, up to float rounding
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=k)
    x, y, _ = chips().tensors
    (g1, d1), (g2, d2) = nets_one, nets_two
    with torch.no_grad():  # and the networks compute the same functions
        torch.testing.assert_close(g2(x), g1(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(d2(x, y), d1(x, y), rtol=1e-4, atol=1e-5)
    metrics = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").open()]
    assert [m["epoch"] for m in metrics] == [1, 2]  # rank 0 alone wrote


def test_batch_norm_ranks_hold_identical_weights_after_every_step(tmp_path: Path) -> None:
    _launch(tmp_path / "bn", "steps", 2)
    spread = json.loads((tmp_path / "bn" / "steps.json").read_text())
    assert len(spread) == 4  # 16 chips / (2 ranks x batch 2)
    assert spread == [0.0] * 4


def train_stage_config(model: ModelConfig, train: TrainConfig) -> Any:
    """The config part of the train stage's key, for a dataset that is only named."""
    named = StageRecord(stage="dataset", key="d0", path="-", cached=True, seconds=0.0)
    return key_parts(named, model, train).config


def test_stage_key_holds_the_world_size_above_one_process() -> None:
    model = ModelConfig()
    one = train_stage_config(model, TrainConfig(device="cpu"))
    assert train_stage_config(model, TrainConfig(device="cpu", devices=1)) == one
    assert "world_size" not in one
    two = train_stage_config(model, TrainConfig(device="cpu", devices=2))
    assert two["world_size"] == 2 and two["train"] == one["train"]
    four = TrainConfig(device="cpu", devices=2, nodes=2, rendezvous="head:29400")
    assert train_stage_config(model, four)["world_size"] == 4
    with pytest.raises(ValidationError, match="rendezvous"):
        TrainConfig(nodes=2)
    with pytest.raises(ValidationError, match="devices"):
        TrainConfig(devices=0)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> PipelineConfig:
    """The quick demo pipeline, its tile and dataset stages done."""
    data = write_demo_scenes(tmp_path_factory.mktemp("scenes"), scene_size=96)
    cfg = demo_config(tmp_path_factory.mktemp("ws"), data.train, quick=True)
    cfg = cfg.model_copy(update={"dask": DaskConfig(n_workers=1, threads_per_worker=1)})
    _dataset(cfg)
    return cfg


def _dataset(cfg: PipelineConfig) -> StageRecord:
    tiles = [tile_stage(cfg.workspace, s, cfg.tiling, cfg.dask) for s in cfg.scenes]
    return dataset_stage(cfg.workspace, [t.path for t in tiles], cfg.dataset, cfg.tiling)


def _kill_rank(folder: Path, rank: int) -> None:
    """SIGKILL the training process of `rank` working in `folder`."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(folder / "ddp.json").encode() in cmdline and f"RANK={rank}".encode() in environ:
            os.kill(int(pid), signal.SIGKILL)
            return
    raise AssertionError(f"no rank {rank} running in {folder}")


@pytest.mark.slow
def test_killed_rank_fails_the_stage_and_the_rerun_resumes(
    pipeline: PipelineConfig, tmp_path: Path
) -> None:
    cfg, dataset = pipeline, _dataset(pipeline)
    train_cfg = cfg.train.model_copy(update={"epochs": 4, "epochs_decay": 0, "devices": 2})
    errors: list[BaseException] = []

    def run() -> None:
        try:
            train_stage(tmp_path, dataset, cfg.model, train_cfg)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    folder = tmp_path / "train"
    deadline = time.monotonic() + 240
    while not list(folder.glob("*/checkpoints/epoch_0001.safetensors")):
        assert time.monotonic() < deadline and worker.is_alive(), errors
        time.sleep(0.2)
    (stage,) = (p for p in folder.iterdir() if p.is_dir())
    _kill_rank(stage, 1)
    worker.join(120)
    assert len(errors) == 1 and isinstance(errors[0], StageError)
    assert "rank 1 was killed by signal 9" in str(errors[0]) and "rerun" in str(errors[0])
    assert not (stage / "manifest.json").exists()
    first = (stage / "metrics.jsonl").read_text().splitlines()[0]

    again = train_stage(tmp_path, dataset, cfg.model, train_cfg)
    assert Path(again.path) == stage and again.summary["epochs"] == 4
    lines = (stage / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]
    assert lines[0] == first  # epoch 1 was kept, not trained again

    # and the resumed run ends with the weights of a run never interrupted, bit for bit
    clean = train_stage(tmp_path / "clean", dataset, cfg.model, train_cfg)
    resumed, uninterrupted = (
        load_checkpoint(list_checkpoints(Path(r.path) / "checkpoints")[0][1])
        for r in (again, clean)
    )
    for net in ("generator", "discriminator"):
        for k, v in uninterrupted[net].items():
            assert torch.equal(resumed[net][k], v), k


@pytest.mark.slow
def test_a_second_node_joins_the_train_stage_of_the_first(pipeline: PipelineConfig) -> None:
    with socket.socket() as probe:  # a free port for the c10d rendezvous
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    two_nodes = {"epochs": 1, "epochs_decay": 0, "devices": 1, "nodes": 2}
    train_cfg = pipeline.train.model_copy(update={**two_nodes, "rendezvous": f"localhost:{port}"})
    cfg = pipeline.model_copy(update={"train": train_cfg})
    records: list[StageRecord] = []

    def first_node() -> None:  # what `p2p run` does at its train stage
        records.append(train_stage(cfg.workspace, _dataset(cfg), cfg.model, cfg.train))

    head = threading.Thread(target=first_node)
    head.start()
    folder = join_training(cfg, wait_s=120)  # the second "machine", here on the same host
    head.join(120)
    assert len(records) == 1 and Path(records[0].path) == folder
    assert json.loads((folder / "ddp.json").read_text())["train"]["nodes"] == 2
    assert "world_size" in json.loads((folder / "manifest.json").read_text())["config"]
    assert list(folder.glob("ddp-*.log")) and (folder / "model" / "model.json").is_file()


def test_an_error_in_the_ranks_is_the_stage_error(pipeline: PipelineConfig, tmp_path: Path) -> None:
    dataset = _dataset(pipeline)
    folder = tmp_path / "train" / "0123456789abcdef"
    save_checkpoint(folder / "checkpoints", 1, {"generator": {}, "discriminator": {}})
    train_cfg = pipeline.train.model_copy(update={"devices": 2})
    with pytest.raises(StageError) as caught:
        train_on_ranks(dataset.path, 0, pipeline.model, train_cfg, folder)
    message = str(caught.value)  # every rank's CheckpointError, as the CLI prints it
    assert "distributed training failed: " in message and "does not fit this run" in message
    assert str(folder / "checkpoints" / "epoch_0001.safetensors") in message
    assert not (folder / "ddp_result.json").exists()
