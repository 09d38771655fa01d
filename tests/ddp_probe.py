"""One rank of the data-parallel tests, as torchrun starts it (`tests/test_distributed.py`).

    python -m torch.distributed.run ... -m tests.ddp_probe OUT_DIR MODE BATCH

MODE ``train``: the real loop (`p2p.model.training.train`) on `chips()`; rank 0 writes its
checkpoint into OUT_DIR as any run does. MODE ``steps``: the real step (`train_step`) on each
rank's shard; after every step the ranks compare their weights (all_gather of each tensor)
and rank 0 writes the largest difference per step to OUT_DIR/steps.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from p2p.bands.normalization import BandStats
from p2p.core.config import ModelConfig, TrainConfig
from p2p.model import distributed
from p2p.model.pix2pix import StepOptions, build_pix2pix, train_step
from p2p.model.training import train

CHIPS = 16
MODEL = {"num_downs": 3, "ngf": 4, "ndf": 4, "n_layers_d": 2, "dropout": 0.0}


def chips() -> TensorDataset:
    """16 paired 2→1-band 32² chips, all valid, the same in every process."""
    g = torch.Generator().manual_seed(7)
    x = torch.rand(CHIPS, 2, 32, 32, generator=g) * 2 - 1
    y = torch.tanh(x[:, :1] * 0.8 - x[:, 1:] * 0.3)
    return TensorDataset(x, y, torch.ones(CHIPS, 1, 32, 32))


def configs(norm: str, batch: int, devices: int) -> tuple[ModelConfig, TrainConfig]:
    """The tests' model and loop: no dropout, no augmentation, fp32 on the CPU."""
    train_cfg = TrainConfig(
        epochs=2, batch_size=batch, device="cpu", augment=False, preview_chips=0, devices=devices
    )
    return ModelConfig(norm=norm, **MODEL), train_cfg  # type: ignore[arg-type]


def steps(out_dir: Path, batch: int) -> None:
    """Step with batch norm; record how far apart the ranks' weights are after each step."""
    model_cfg, cfg = configs("batch", batch, distributed.current().world)
    run = build_pix2pix(model_cfg, cfg, 2, 1, torch.device("cpu"))
    distributed.wrap(run)
    data = chips()
    loader = DataLoader(data, batch_size=batch, sampler=distributed.sampler(data, cfg.seed))
    world = distributed.current().world
    spread = []
    for batch_data in loader:
        train_step(run, *batch_data, StepOptions(lambda_l1=cfg.lambda_l1))
        worst = 0.0
        for p in [*run.g.parameters(), *run.d.parameters()]:
            copies = [torch.empty_like(p) for _ in range(world)]
            torch.distributed.all_gather(copies, p.detach().contiguous())
            worst = max(worst, *(float((c - copies[0]).abs().max()) for c in copies))
        spread.append(worst)
    if distributed.current().main:
        (out_dir / "steps.json").write_text(json.dumps(spread))


def main(argv: list[str]) -> None:
    out_dir, mode, batch = Path(argv[0]), argv[1], int(argv[2])
    distributed.init_from_torchrun()
    if mode == "steps":
        steps(out_dir, batch)
    else:
        model_cfg, cfg = configs("instance", batch, distributed.current().world)
        target = BandStats((0.0,), (1.0,), (-1.0,), (1.0,))
        train(chips(), None, model_cfg, cfg, out_dir, target)
    distributed.exit_rank(0)


if __name__ == "__main__":
    main(sys.argv[1:])
