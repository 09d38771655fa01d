"""The generator of a bundle as ONNX: `export_onnx` writes it (`p2p.infer.onnxrun` runs it).

`p2p export --model DIR` adds ``model.onnx`` to a bundle: the generator in eval mode (BatchNorm
with its running statistics, no dropout) traced by ``torch.onnx.export`` with a dynamic batch
and a height and width that are any multiple of ``2**num_downs`` (the U-Net's input multiple).
It maps `(N, C_in, H, W)` float32 in [-1, 1] to `(N, C_out, H, W)` float32 in [-1, 1]; the
normalization statistics stay in ``model.json``, so the raster engine around the model is the
same for both runtimes.

``model.json`` records the file's sha256 and the sha256 of the weights it was made from: a
predict with ``runtime: onnx`` refuses a missing, corrupt or stale ``model.onnx``. The bundle is
rebuilt in a temporary sibling and renamed into place, as `write_bundle` does, so a killed
export leaves the bundle as it was.

Export needs ``onnx`` and ``onnxscript`` besides torch; running needs ``onnxruntime``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import shutil
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from p2p.core.errors import ConfigError
from p2p.core.fsutil import sha256_file
from p2p.infer.onnxrun import local_folder
from p2p.model.bundle import (
    ONNX,
    WEIGHTS,
    load_bundle,
    write_bundle_folder,
    write_meta,
)

log = logging.getLogger(__name__)

#: ONNX opset of the export (onnxruntime 1.17+ runs it).
OPSET = 18
INPUT = "source"
OUTPUT = "target"


def _write_onnx(generator: torch.nn.Module, in_channels: int, multiple: int, path: Path) -> None:
    """Trace `generator` (eval mode, CPU) into `path` with dynamic batch, height and width."""
    if importlib.util.find_spec("onnxscript") is None:
        raise ConfigError("export", "needs onnx and onnxscript: pip install 'p2p[onnx]'")
    generator = generator.to("cpu").eval()
    example = torch.zeros(2, in_channels, 2 * multiple, 2 * multiple)
    batch = torch.export.Dim("batch", min=1)
    rows, cols = torch.export.Dim("rows", min=1), torch.export.Dim("cols", min=1)
    dims = {"x": {0: batch, 2: multiple * rows, 3: multiple * cols}}
    # the exporter reports progress with print() and warns about torch internals (and that
    # torchvision's detection ops are absent): keep the CLI's output clean
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry.level
    registry.setLevel(logging.ERROR)
    try:
        _trace(generator, example, dims, path)
    finally:
        registry.setLevel(level)


def _trace(generator: torch.nn.Module, example: torch.Tensor, dims: Any, path: Path) -> None:
    """Run torch.onnx.export (dynamo) with progress prints and FutureWarnings silenced."""
    with (
        contextlib.redirect_stdout(io.StringIO()),
        warnings.catch_warnings(category=FutureWarning, action="ignore"),
        torch.no_grad(),
    ):
        program = torch.onnx.export(
            generator,
            (example,),
            dynamo=True,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes=dims,
            opset_version=OPSET,
            verbose=False,
        )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(path))


def export_onnx(model_dir: str | Path) -> Path:
    """Write ``model.onnx`` into the bundle at `model_dir` and record it in ``model.json``.

    Args:
        model_dir: A bundle folder (`p2p.model.bundle`).

    Returns:
        The path of ``model.onnx``.

    Raises:
        BundleError: `model_dir` is not a loadable bundle (missing, corrupt, wrong shapes).
        ConfigError: onnx or onnxscript is not installed.
    """
    bundle = load_bundle(model_dir)
    multiple = int(2**bundle.meta.model.num_downs)
    final = local_folder(bundle.path, "export into")

    def fill(tmp: Path) -> None:
        _link_or_copy(final / WEIGHTS, tmp / WEIGHTS)
        _write_onnx(bundle.generator, bundle.meta.in_channels, multiple, tmp / ONNX)
        record = {
            "file": ONNX,
            "sha256": sha256_file(tmp / ONNX),
            "weights_sha256": bundle.weights_hash,
            "opset": OPSET,
            "multiple": multiple,
            "torch": torch.__version__,
        }
        write_meta(tmp, replace(bundle.meta, onnx=record), bundle.weights_hash)

    write_bundle_folder(final, fill)
    log.info("wrote %s", final / ONNX)
    return final / ONNX


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link `src` at `dst` (bundle files are never changed in place), else copy it."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
