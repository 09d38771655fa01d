"""A model bundle's metadata (``model.json``) and identity, read without torch.

What a bundle is and how it is laid out: `p2p.model.bundle`. Checking a prediction's inputs
against a bundle and keying its cache entries only need what is here (the architecture, bands,
statistics and the weights' checksum), so `p2p predict` imports torch only when a window is
actually computed: a rerun whose predictions are cached, or one that only rebuilds the mosaic,
starts in a fraction of a second instead of paying torch's import (about 1.3 s).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from p2p import __version__
from p2p.core import storage
from p2p.core.config import ModelConfig
from p2p.core.errors import BundleError, InputError
from p2p.core.fsutil import json_text, sha256_file

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


def write_meta(folder: Path, meta: BundleMeta, weights_sha256: str) -> None:
    """Write `folder/model.json`: `meta` and the checksum of the weights beside it."""
    record = {**meta.to_dict(), "weights_sha256": weights_sha256}
    (folder / META).write_text(json_text(record))


def read_bundle_object(url: str) -> bytes:
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
        return url, read_bundle_object(url).decode("utf-8", errors="replace")
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


@dataclass(frozen=True)
class BundleRef:
    """A bundle as known without its weights loaded: enough to check inputs and key outputs.

    Attributes:
        meta: The bundle's metadata.
        weights_hash: sha256 (hex) of `weights.safetensors`; identifies the model in cache keys.
        path: The bundle folder (or its s3:// prefix).
    """

    meta: BundleMeta
    weights_hash: str
    path: Path | str


#: Checksums of local bundle files (weights, ``model.onnx``) this process hashed and found
#: sound, by the file's version (device, inode, size, modification time in ns): predicting N
#: scenes with one model checked the file 2N times (the check, then the load or the session),
#: 0.14 s each for the paper's U-Net (218 MB).
#: A file written again gets another modification time and is hashed again; one modified less
#: than `SETTLED_NS` before it was hashed is not remembered (a write in the same clock tick
#: could keep its time, as git's "racy" index entries).
_sound: dict[tuple[int, int, int, int], str] = {}
SETTLED_NS = 2_000_000_000


def checked_sha256(path: Path, expected: str) -> str:
    """sha256 (hex) of the local file `path`, not read again if this process found this very
    version of it sound before; remembered when it matches `expected` (any digest when
    `expected` is empty) and was written more than `SETTLED_NS` ago."""
    st = path.stat()
    version = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    digest = _sound.get(version) or sha256_file(path)
    if (not expected or digest == expected) and time.time_ns() - version[3] > SETTLED_NS:
        _sound[version] = digest
    return digest


def weights_digest(model_dir: str | Path, recorded: str, blob: bytes | None = None) -> str:
    """sha256 (hex) of a bundle's weights (`blob`, when already read from object storage),
    checked against the checksum `model.json` records (if any); a local file this process has
    already checked, unchanged since, is not read again.

    Raises:
        BundleError: the weights are missing, or truncated or corrupt (checksum mismatch).
    """
    weights = storage.join(model_dir, WEIGHTS)
    if blob is None and storage.is_remote(model_dir):
        blob = read_bundle_object(weights)
    if blob is not None:
        digest = hashlib.sha256(blob).hexdigest()
    elif not Path(weights).is_file():
        raise BundleError(weights, "missing: the bundle has no weights")
    else:
        digest = checked_sha256(Path(weights), recorded)
    if recorded and digest != recorded:
        raise BundleError(
            weights,
            "does not match the checksum in model.json: truncated or corrupt; copy it again",
        )
    return digest


def read_ref(model_dir: str | Path, verify: bool = False) -> BundleRef:
    """The bundle's metadata and weights checksum, without loading the weights (nor torch).

    Args:
        model_dir: The bundle folder, or its ``s3://`` prefix.
        verify: Hash the weights and check them against `model.json` (as loading does), so a
            truncated copy is refused before any work; otherwise the recorded checksum is
            trusted (the weights are hashed only when an older bundle records none).

    Raises:
        BundleError: as `read_meta`; with `verify`, as `weights_digest`.
    """
    meta, recorded = read_meta(model_dir)
    digest = recorded if recorded and not verify else weights_digest(model_dir, recorded)
    where = model_dir if storage.is_remote(model_dir) else Path(model_dir)
    return BundleRef(meta, digest, where)
