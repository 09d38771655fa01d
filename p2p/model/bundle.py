"""The model bundle: everything needed to predict, in one folder, with no pickled code.

    MODEL_DIR/weights.safetensors   the generator's state dict (safetensors)
    MODEL_DIR/model.json            format version, architecture, bands, normalization
                                    statistics, target dtype/nodata, chip size, training
                                    summary, metrics, and the weights' sha256
    MODEL_DIR/model.onnx            optional (`p2p export`): the generator as ONNX; its
                                    sha256 and the weights it came from are in model.json

The folder is written into a temporary sibling and renamed into place, so a reader never sees
a half-written bundle. A bundle may also live under an ``s3://`` prefix: it is then read with
two GETs, and written by uploading the weights first and ``model.json`` last (a reader finds
no bundle until ``model.json`` is there; one overwritten in place fails the weights checksum
until both are new, never loading mismatched weights). Loading checks the format version, the
weights' checksum and their shapes, and raises `BundleError` with a message a user can act on.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, load_file, save

from p2p.core import storage, transfer
from p2p.core.errors import BundleError
from p2p.core.fsutil import create_temp_dir, fsync_dir, fsync_file, sha256_file
from p2p.model.meta import (
    FORMAT_VERSION,
    META,
    ONNX,
    WEIGHTS,
    BundleMeta,
    BundleRef,
    read_bundle_object,
    read_meta,
    weights_digest,
    write_meta,
)
from p2p.model.networks import UNetGenerator, build_generator

# the metadata half lives in p2p.model.meta (no torch); importers of this module keep finding it
__all__ = [
    "FORMAT_VERSION",
    "META",
    "ONNX",
    "WEIGHTS",
    "Bundle",
    "BundleMeta",
    "BundleRef",
    "load_bundle",
    "read_meta",
    "sha256_file",
    "write_bundle",
    "write_bundle_folder",
    "write_meta",
]


@dataclass(frozen=True)
class Bundle(BundleRef):
    """A loaded bundle: its `BundleRef` (meta, weights_hash, path) and the generator.

    Attributes:
        generator: The generator in eval mode, on the requested device.
    """

    generator: UNetGenerator


def write_bundle(model_dir: str | Path, generator: UNetGenerator, meta: BundleMeta) -> Path | str:
    """Write `generator` and `meta` as a bundle at `model_dir`, replacing any earlier one.

    The bundle appears complete or not at all: it is written into a temporary sibling folder
    and renamed into place.

    Args:
        model_dir: The bundle folder to create, or an ``s3://`` prefix.
        generator: The trained generator (any device; stored as contiguous CPU tensors).
        meta: Its metadata; band counts must match the generator.

    Returns:
        The bundle folder (or URL).

    Raises:
        ValueError: The generator's band counts differ from `meta`'s.
        OutputError: an upload failed.
    """
    if storage.is_remote(model_dir):
        url = str(model_dir)
        transfer.check_writable(url)
        with tempfile.TemporaryDirectory(prefix="p2p-bundle-") as scratch:
            local = write_bundle(Path(scratch, "model"), generator, meta)
            for name in (WEIGHTS, META):  # model.json last: it makes the bundle visible
                transfer.upload(Path(local, name), storage.join(url, name))
        return url
    model_dir = Path(model_dir)
    if (generator.in_channels, generator.out_channels) != (meta.in_channels, meta.out_channels):
        raise ValueError(
            f"generator maps {generator.in_channels}→{generator.out_channels} bands but meta "
            f"says {meta.in_channels}→{meta.out_channels}"
        )

    def fill(tmp: Path) -> None:
        state = {k: v.detach().to("cpu").contiguous() for k, v in generator.state_dict().items()}
        # bytes, then a plain write: safetensors' save_file creates its file mode 0600
        weights = save(state, metadata={"format": "pt"})
        (tmp / WEIGHTS).write_bytes(weights)
        write_meta(tmp, meta, hashlib.sha256(weights).hexdigest())

    write_bundle_folder(model_dir, fill)
    return model_dir


def write_bundle_folder(model_dir: Path, fill: Callable[[Path], None]) -> None:
    """Build a bundle folder with `fill(tmp)` in a temporary sibling, flush every file in it,
    and rename it onto `model_dir` (replacing any earlier one): it appears whole or not at all.
    """
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    # the ".tmp" suffix lets a resumed stage sweep what a killed write left (p2p.core.cache)
    tmp = create_temp_dir(model_dir.parent, f".{model_dir.name}.", ".tmp")
    try:
        fill(tmp)
        for path in tmp.iterdir():
            fsync_file(path)
        _swap_in(tmp, model_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(tmp: Path, final: Path) -> None:
    """Rename folder `tmp` onto `final`; an existing `final` is moved aside, then removed."""
    old = None
    if final.exists():
        old = create_temp_dir(final.parent, f".{final.name}.old.", ".tmp")
        os.replace(final, old / final.name)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_bundle(model_dir: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """Load a bundle: checks format, checksum and shapes; unpickles nothing.

    Args:
        model_dir: The bundle folder, or its ``s3://`` prefix.
        device: Where to put the generator.

    Raises:
        BundleError: Missing folder or file, a newer format, truncated or corrupt weights, or
            weights that do not fit the architecture in `model.json`.
    """
    meta, recorded = read_meta(model_dir)
    remote = storage.is_remote(model_dir)
    weights = storage.join(model_dir, WEIGHTS)
    blob = read_bundle_object(weights) if remote else b""
    digest = weights_digest(model_dir, recorded, blob if remote else None)
    try:
        state = load(blob) if remote else load_file(weights, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(weights, f"cannot be read: truncated or corrupt ({exc})") from None
    generator = build_generator(meta.model, meta.in_channels, meta.out_channels)
    try:
        generator.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise BundleError(
            weights, f"do not fit the model described in model.json ({detail})"
        ) from None
    where = model_dir if remote else Path(model_dir)
    return Bundle(meta, digest, where, generator.to(device).eval())
