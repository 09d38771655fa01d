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
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, load_file, save

from p2p import __version__
from p2p.core import storage
from p2p.core.config import ModelConfig
from p2p.core.errors import BundleError, InputError
from p2p.core.fsutil import create_temp_dir, fsync_dir, fsync_file
from p2p.model.networks import UNetGenerator, build_generator

#: 2: optional linear path in the generator (`model.linear_anchor`) and the baselines.
FORMAT_VERSION = 2
WEIGHTS = "weights.safetensors"
META = "model.json"
ONNX = "model.onnx"


@dataclass(frozen=True)
class BundleMeta:
    """What `model.json` holds besides the checksum.

    Attributes:
        model: Architecture (a `ModelConfig`; a dict is validated into one): num_downs, ngf,
            ndf, n_layers_d, norm, dropout.
        in_channels: Source bands the generator takes.
        out_channels: Target bands it returns.
        source_bands: Names of the source bands, in order.
        target_bands: Names of the target bands, in order.
        source_stats: Source normalization (`BandStats.to_dict()`), raster units.
        target_stats: Target normalization (`BandStats.to_dict()`), target units.
        target_dtype: numpy dtype name of the target rasters, e.g. ``"uint16"``.
        target_nodata: Nodata value written into predictions, or None.
        source_nodata: Nodata of the training sources, used when a scene declares none.
        chip_size: Chip side the model was trained on, in pixels.
        training: Summary of the run (epochs, config, dataset key, ...).
        metrics: Validation metrics of the kept epoch, in target units.
        baselines: The constant-mean and linear baselines fitted on the training chips
            (`Baselines.to_dict()`), raster units; empty in bundles from before format 2.
        onnx: The ONNX export's record (``file``, ``sha256``, ``weights_sha256``, ``opset``,
            ``multiple``), empty when the bundle has none (see `p2p.infer.onnxbundle`).
        p2p_version: The p2p that wrote the bundle.
        format_version: Bundle layout version (`FORMAT_VERSION` when written).
    """

    model: ModelConfig
    in_channels: int
    out_channels: int
    source_bands: tuple[str, ...]
    target_bands: tuple[str, ...]
    source_stats: dict[str, Any]
    target_stats: dict[str, Any]
    target_dtype: str
    target_nodata: float | None
    source_nodata: float | None
    chip_size: int
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    baselines: dict[str, Any] = field(default_factory=dict)
    onnx: dict[str, Any] = field(default_factory=dict)
    p2p_version: str = __version__
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        # normalize so from_dict(to_dict(m)) == m whatever the caller passed (a model dict
        # from model.json becomes the typed config; missing fields take ModelConfig defaults)
        if not isinstance(self.model, ModelConfig):
            # a record without linear_anchor predates it (format 1): no linear path
            record = {"linear_anchor": False, **dict(self.model)}
            object.__setattr__(self, "model", ModelConfig.model_validate(record))
        object.__setattr__(self, "source_bands", tuple(str(b) for b in self.source_bands))
        object.__setattr__(self, "target_bands", tuple(str(b) for b in self.target_bands))
        if len(self.source_bands) != self.in_channels:
            raise ValueError(f"{len(self.source_bands)} source band names for {self.in_channels}")
        if len(self.target_bands) != self.out_channels:
            raise ValueError(f"{len(self.target_bands)} target band names for {self.out_channels}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        data = asdict(self)
        data["model"] = self.model.model_dump(mode="json")
        data["source_bands"] = list(self.source_bands)
        data["target_bands"] = list(self.target_bands)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BundleMeta:
        """Inverse of `to_dict`; keys it does not know are ignored.

        Raises:
            KeyError: A required field is missing.
            ValueError, TypeError: A field has the wrong form.
        """
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle.

    Attributes:
        generator: The generator in eval mode, on the requested device.
        meta: The bundle's metadata.
        weights_hash: sha256 (hex) of `weights.safetensors`; identifies the model in cache keys.
        path: The bundle folder (or its s3:// prefix).
    """

    generator: UNetGenerator
    meta: BundleMeta
    weights_hash: str
    path: Path | str


def sha256_file(path: Path) -> str:
    """sha256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
        storage.check_writable(url)
        with tempfile.TemporaryDirectory(prefix="p2p-bundle-") as scratch:
            local = write_bundle(Path(scratch, "model"), generator, meta)
            for name in (WEIGHTS, META):  # model.json last: it makes the bundle visible
                storage.upload(Path(local, name), storage.join(url, name))
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


def write_meta(folder: Path, meta: BundleMeta, weights_sha256: str) -> None:
    """Write `folder/model.json`: `meta` and the checksum of the weights beside it."""
    record = {**meta.to_dict(), "weights_sha256": weights_sha256}
    (folder / META).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


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


def _read_object(url: str) -> bytes:
    """An object of a bundle on S3; a missing key means a missing file of the bundle."""
    try:
        return storage.read_bytes(url)
    except InputError as exc:
        if exc.problem.startswith("no such key"):
            what = "the bundle has no weights" if url.endswith(WEIGHTS) else "no p2p bundle here"
            raise BundleError(url, f"missing: {what} ({exc.problem})") from None
        raise BundleError(url, exc.problem) from None


def _meta_text(model_dir: str | Path) -> tuple[str, str]:
    """(where, text) of a bundle's model.json, local or on S3."""
    if storage.is_remote(model_dir):
        url = storage.join(model_dir, META)
        return url, _read_object(url).decode("utf-8", errors="replace")
    folder = Path(model_dir)
    if not folder.is_dir():
        raise BundleError(
            folder, "no such model folder (expected weights.safetensors + model.json)"
        )
    path = folder / META
    if not path.is_file():
        raise BundleError(path, "missing: this folder is not a p2p model bundle")
    try:
        return str(path), path.read_text()
    except OSError as exc:
        raise BundleError(path, f"cannot be read ({exc})") from None


def read_meta(model_dir: str | Path) -> tuple[BundleMeta, str]:
    """The metadata of a bundle and the weights checksum it records, without the weights.

    Raises:
        BundleError: The folder or `model.json` is missing, unreadable, from a newer format
            or incomplete.
    """
    path, text = _meta_text(model_dir)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BundleError(path, f"cannot be read as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BundleError(path, "must hold a JSON object")
    version = data.get("format_version")
    if not isinstance(version, int):
        raise BundleError(path, "has no integer format_version: not a p2p model bundle")
    if version > FORMAT_VERSION:
        raise BundleError(
            path,
            f"was written by a newer p2p (format {version} > {FORMAT_VERSION}); upgrade p2p",
        )
    try:
        meta = BundleMeta.from_dict(data)
    except (TypeError, ValueError, KeyError) as exc:
        raise BundleError(path, f"is incomplete or malformed ({exc})") from None
    return meta, str(data.get("weights_sha256", ""))


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
    if remote:
        blob = _read_object(weights)
        digest = hashlib.sha256(blob).hexdigest()
    elif not Path(weights).is_file():
        raise BundleError(weights, "missing: the bundle has no weights")
    else:
        digest = sha256_file(Path(weights))
    if recorded and digest != recorded:
        raise BundleError(
            weights,
            "does not match the checksum in model.json: truncated or corrupt; copy it again",
        )
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
    return Bundle(generator.to(device).eval(), meta, digest, where)
