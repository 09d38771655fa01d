"""Training checkpoints: written atomically, loaded without unpickling code, newest 2 kept.

A checkpoint is a plain dict of tensors and numbers (`epoch_NNNN.pt`, torch.save format) holding
everything the run needs to continue as if never stopped: both networks, both optimizers,
both LR schedulers, the gradient scaler, the epoch and every RNG state. It is read with
`torch.load(weights_only=True)`, which refuses anything but tensors and plain containers.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from p2p.core.fsutil import atomic_path

log = logging.getLogger(__name__)

KEEP = 2
_NAME = re.compile(r"^epoch_(\d{4,})\.pt$")


def checkpoint_path(folder: Path, epoch: int) -> Path:
    """`folder/epoch_{epoch:04d}.pt`."""
    return folder / f"epoch_{epoch:04d}.pt"


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """`(epoch, path)` of the checkpoints in `folder`, newest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found, reverse=True)


def capture_rng(loader_generator: torch.Generator) -> dict[str, Any]:
    """Every RNG state a training epoch draws from, in weights_only-loadable form."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "loader": loader_generator.get_state(),
    }


def restore_rng(state: dict[str, Any], loader_generator: torch.Generator) -> None:
    """Inverse of `capture_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    loader_generator.set_state(state["loader"])


def save_checkpoint(folder: Path, epoch: int, state: dict[str, Any]) -> Path:
    """Write `state` as `epoch_NNNN.pt` atomically, then delete all but the newest `KEEP`.

    Returns:
        The checkpoint's path.
    """
    path = checkpoint_path(folder, epoch)
    with atomic_path(path, ".pt") as tmp:
        torch.save({"epoch": epoch, **state}, tmp)
    for _, old in list_checkpoints(folder)[KEEP:]:
        old.unlink(missing_ok=True)
    return path


def load_newest(folder: Path, device: torch.device | str = "cpu") -> dict[str, Any] | None:
    """The newest checkpoint in `folder` that loads, or None when there is none.

    A checkpoint that cannot be read (truncated, corrupt) is skipped with a warning and the
    next older one is tried.
    """
    for epoch, path in list_checkpoints(folder):
        try:
            state: dict[str, Any] = torch.load(path, map_location=device, weights_only=True)
        except Exception as exc:  # any unreadable file means "try the older one"
            log.warning("skipping unreadable checkpoint %s (%s)", path, exc)
            continue
        if not isinstance(state, dict) or state.get("epoch") != epoch:
            log.warning("skipping checkpoint %s: not a p2p checkpoint of epoch %d", path, epoch)
            continue
        state["path"] = str(path)
        return state
    return None
