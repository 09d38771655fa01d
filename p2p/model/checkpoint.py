"""Training checkpoints: written atomically, loaded without any pickle, newest 2 kept.

A checkpoint (`epoch_NNNN.safetensors`) holds everything the run needs to continue as if
never stopped: both networks, both optimizers, both LR schedulers, the gradient scaler, the
epoch and every RNG state. It is one safetensors file: every tensor (weights, optimizer
moments and steps, RNG states) is a named tensor, and the rest of the state (numbers, lists,
schedules, metrics) is strict JSON in the file's metadata, in which each tensor stands as
``{"$tensor": name}``. Loading parses a JSON document and reads raw tensor bytes, nothing
else: no pickle anywhere, so a crafted checkpoint can run no code. `load_generator` builds the
generator a checkpoint holds (its last, average or best one).
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from p2p.core.errors import CheckpointError
from p2p.core.fsutil import atomic_path
from p2p.model.networks import UNetGenerator, build_generator

if TYPE_CHECKING:
    from p2p.core.config import ModelConfig

log = logging.getLogger(__name__)

KEEP = 2
SUFFIX = ".safetensors"
_NAME = re.compile(r"^epoch_(\d{4,})\.safetensors$")
#: The metadata key holding the JSON part of a checkpoint.
STATE_KEY = "p2p_state"


def checkpoint_path(folder: Path, epoch: int) -> Path:
    """`folder/epoch_{epoch:04d}.safetensors`."""
    return folder / f"epoch_{epoch:04d}{SUFFIX}"


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """`(epoch, path)` of the checkpoints in `folder`, newest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found, reverse=True)


def capture_rng(loader_generator: torch.Generator) -> dict[str, Any]:
    """Every RNG state a training epoch draws from, as tensors and plain numbers."""
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


def _split(value: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    """`value` as JSON data, its tensors moved into `tensors` under their path in the tree.

    Tuples become lists; dicts with integer keys (an optimizer's per-parameter state) and
    non-finite floats are marked, so `_join` gives back exactly what was saved.
    """
    if isinstance(value, torch.Tensor):
        # a copy of its own: safetensors refuses tensors that share memory
        tensors[path] = value.detach().to("cpu", copy=True).contiguous()
        return {"$tensor": path}
    if isinstance(value, dict):
        if value and all(isinstance(k, int) for k in value):
            return {
                "$intkeys": {str(k): _split(v, tensors, f"{path}/{k}") for k, v in value.items()}
            }
        return {str(k): _split(v, tensors, f"{path}/{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_split(v, tensors, f"{path}/{i}") for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": repr(value)}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"{path}: {type(value).__name__} cannot be checkpointed")


def _join(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `_split`."""
    if isinstance(value, dict):
        if set(value) == {"$tensor"}:
            return tensors[value["$tensor"]]
        if set(value) == {"$intkeys"}:
            return {int(k): _join(v, tensors) for k, v in value["$intkeys"].items()}
        if set(value) == {"$float"}:
            return float(value["$float"])
        return {k: _join(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_join(v, tensors) for v in value]
    return value


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The state saved by `save_checkpoint` (tensors on `device`).

    Raises:
        ValueError: the file is no p2p checkpoint (or is truncated or corrupt).
        OSError: it cannot be read.
    """
    with safe_open(str(path), "pt") as fh:
        text = (fh.metadata() or {}).get(STATE_KEY)
    if text is None:
        raise ValueError("no p2p training state in the file")
    tensors = load_file(str(path), device=str(device))
    state: dict[str, Any] = _join(json.loads(text), tensors)
    return state


def save_checkpoint(folder: Path, epoch: int, state: dict[str, Any]) -> Path:
    """Write `state` as `epoch_NNNN.safetensors` atomically, then delete all but the newest
    `KEEP`.

    Returns:
        The checkpoint's path.
    """
    path = checkpoint_path(folder, epoch)
    tensors: dict[str, torch.Tensor] = {}
    tree = _split({"epoch": epoch, **state}, tensors, "")
    metadata = {STATE_KEY: json.dumps(tree, allow_nan=False, separators=(",", ":"))}
    with atomic_path(path, SUFFIX) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
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
            state = load_checkpoint(path, device)
        except Exception as exc:  # any unreadable file means "try the older one"
            log.warning("skipping unreadable checkpoint %s (%s)", path, exc)
            continue
        if not isinstance(state, dict) or state.get("epoch") != epoch:
            log.warning("skipping checkpoint %s: not a p2p checkpoint of epoch %d", path, epoch)
            continue
        state["path"] = str(path)
        return state
    return None


def load_generator(
    checkpoint: Path,
    model_cfg: ModelConfig,
    in_channels: int,
    out_channels: int,
    device: str | torch.device = "cpu",
    best: bool = False,
) -> UNetGenerator:
    """The generator of a training checkpoint, in eval mode.

    Args:
        checkpoint: A training checkpoint.
        model_cfg: Its architecture.
        in_channels: Source bands.
        out_channels: Target bands.
        device: Where to put it.
        best: The generator of the best validation epoch held in the checkpoint (the
            checkpoint's own when it holds none).

    Raises:
        CheckpointError: The file cannot be read or holds a different architecture.
    """
    try:
        state = load_checkpoint(checkpoint)
        g = build_generator(model_cfg, in_channels, out_channels)
        kept = state.get("best") if best else None
        last = state.get("generator_ema", state["generator"])  # the average, when trained with one
        g.load_state_dict(kept["generator"] if kept else last)
    except Exception as exc:
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(checkpoint, f"cannot load the generator ({problem})") from None
    return g.to(device).eval()
