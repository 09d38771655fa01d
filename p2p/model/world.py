"""How many training processes a config asks for, without importing torch unless it must.

Stage keys depend on the world size (`p2p.stages.train`), and keys are computed by `p2p plan`
and by a fully cached `p2p run`, which never load torch. So the rule lives here, apart from
`p2p.model.distributed`: only ``devices: auto`` with a device that may be CUDA asks torch for
the GPU count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from p2p.core.config import TrainConfig


def processes_per_node(cfg: TrainConfig) -> int:
    """`train.devices` resolved: a number as given; auto → one per CUDA GPU when training on
    CUDA (`train.device` auto or cuda, and a GPU present), else 1."""
    if cfg.devices != "auto":
        return int(cfg.devices)
    if cfg.device == "cpu":
        return 1
    import torch

    on_cuda = cfg.device == "cuda" or torch.cuda.is_available()
    return max(torch.cuda.device_count() if on_cuda else 0, 1)


def world_size(cfg: TrainConfig) -> int:
    """Training processes in all: processes per node × nodes."""
    return processes_per_node(cfg) * cfg.nodes
