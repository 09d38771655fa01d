"""A bundle's ``model.onnx`` (`p2p export`) run by onnxruntime, without torch.

A prediction with ``runtime: onnx`` never imports torch (test-time augmentation turns numpy
arrays, `p2p.infer.tta`): its process starts about 1.2 s sooner (torch's import alone is
1.0–1.5 s of CPU) and the strip loop's windows go from numpy to onnxruntime and back.
`p2p.infer.runtime` picks this module or the torch runtime (`p2p.infer.translator`);
`p2p.infer.onnxbundle` writes the file.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from p2p.core.errors import BundleError, ConfigError
from p2p.core.threads import available_cores, pool_threads_from_env
from p2p.model.meta import ONNX, BundleRef, checked_sha256


def local_folder(path: Path | str, what: str) -> Path:
    """A bundle folder on this file system; an object-storage bundle is refused in one line."""
    if not isinstance(path, Path):
        raise BundleError(path, f"cannot {what} a bundle on object storage; copy it locally first")
    return path


def onnx_model(bundle: BundleRef) -> Path:
    """The bundle's ``model.onnx``, after checking it is the export of these very weights.

    Raises:
        BundleError: The bundle has no export, or the file is missing, altered or was made
            from other weights; the message says to run ``p2p export``.
    """
    record = bundle.meta.onnx
    path = local_folder(bundle.path, "run on onnxruntime") / str(record.get("file", ONNX))
    again = f"run `p2p export --model {bundle.path}`"
    if not record:
        raise BundleError(bundle.path, f"has no ONNX model; {again} first")
    if record.get("weights_sha256") != bundle.weights_hash:
        raise BundleError(path, f"was exported from other weights; {again}")
    if not path.is_file():
        raise BundleError(path, f"missing; {again}")
    if checked_sha256(path, str(record.get("sha256"))) != record.get("sha256"):
        raise BundleError(path, f"does not match its checksum in model.json; {again}")
    return path


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError(
            "predict.runtime", "onnx needs onnxruntime: pip install 'p2p[onnx]'"
        ) from None
    return onnxruntime


def onnx_providers(device: str) -> list[str]:
    """onnxruntime execution providers for ``auto``/``cpu``/``cuda``, best first.

    Raises:
        ConfigError: onnxruntime is not installed, or ``cuda`` was asked for and it has no
            CUDA provider.
    """
    ort = _onnxruntime()
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "cuda" and not has_cuda:
        raise ConfigError(
            "predict.device",
            "cuda was asked for but onnxruntime has no CUDA provider (install onnxruntime-gpu)",
        )
    cuda = ["CUDAExecutionProvider"] if has_cuda and device != "cpu" else []
    return [*cuda, "CPUExecutionProvider"]


def intra_op_threads() -> int:
    """The thread budget's intra-op count in this process (`p2p.core.threads.apply_budget`):
    the torch runtime's when torch computes here, else the ``OMP_NUM_THREADS`` the budget set
    (torch is not imported for it), else the cores."""
    cpuforward = sys.modules.get("p2p.infer.cpuforward")
    if cpuforward is not None:  # torch is loaded: its count, also while a forward holds it at 1
        return int(cpuforward.intra_op_budget())
    torch = sys.modules.get("torch")
    if torch is not None:
        return int(torch.get_num_threads())
    return pool_threads_from_env() or available_cores()


class OnnxTranslator:
    """An exported generator (``model.onnx``) run by onnxruntime, fp32 on every provider.

    Args:
        path: The ONNX file (`onnx_model` checks it belongs to the bundle).
        device: ``auto`` (CUDA provider when present), ``cpu`` or ``cuda``.
    """

    def __init__(self, path: Path, device: str) -> None:
        ort = _onnxruntime()
        options = ort.SessionOptions()
        # the thread budget's count (the torch path's), not onnxruntime's default (every
        # physical core, which oversubscribes a Dask worker's task slots); pixels do not
        # depend on the count (tests/test_onnx.py). Idle workers would spin after each run
        # by default, on the cores the strip loop's reader and writer decode and encode on.
        options.intra_op_num_threads = intra_op_threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=onnx_providers(device))
        self.input = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """`(N, C_in, h, w)` float32 normalized → `(N, C_out, h, w)` float32 normalized."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        (y,) = self.session.run(None, {self.input: x})
        return np.asarray(y, dtype=np.float32)
