"""Model bundle: round trip, atomic replacement, and the errors users meet."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

import pytest
import torch

from p2p.bands.normalization import BandStats
from p2p.core.errors import BundleError
from p2p.model import meta
from p2p.model.bundle import FORMAT_VERSION, BundleMeta, load_bundle, write_bundle
from p2p.model.meta import WEIGHTS, read_ref
from p2p.model.networks import UNetGenerator, init_weights

MODEL = {"num_downs": 4, "ngf": 8, "ndf": 8, "n_layers_d": 3, "norm": "batch", "dropout": 0.5}


def _meta(**changes: object) -> BundleMeta:
    fields: dict[str, object] = {
        "model": MODEL,
        "in_channels": 2,
        "out_channels": 1,
        "source_bands": ["B2", "B3"],
        "target_bands": ["B4"],
        "source_stats": BandStats((1.0, 2.0), (1.0, 1.0), (0.0, 0.0), (10.0, 20.0)).to_dict(),
        "target_stats": BandStats((500.0,), (100.0,), (0.0,), (10000.0,)).to_dict(),
        "target_dtype": "uint16",
        "target_nodata": 0.0,
        "source_nodata": None,
        "chip_size": 32,
        "training": {"epochs": 3},
        "metrics": {"overall": {"mae": 12.5}},
    }
    fields.update(changes)
    return BundleMeta(**fields)  # type: ignore[arg-type]


def _generator(seed: int = 0) -> UNetGenerator:
    torch.manual_seed(seed)
    g = UNetGenerator(2, 1, num_downs=4, ngf=8)
    init_weights(g)
    # a trained model's BatchNorm buffers are not the defaults; make sure they travel too
    for m in g.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return g.eval()


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    return write_bundle(tmp_path / "model", _generator(), _meta())


def test_round_trip_gives_the_same_predictions_and_metadata(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    x = torch.rand(2, 2, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(bundle.generator(x), _generator()(x))
    assert not bundle.generator.training
    assert bundle.meta == _meta()
    assert bundle.meta.format_version == FORMAT_VERSION
    weights = (bundle_dir / "weights.safetensors").read_bytes()
    assert bundle.weights_hash == hashlib.sha256(weights).hexdigest()
    assert sorted(p.name for p in bundle_dir.iterdir()) == ["model.json", "weights.safetensors"]
    assert BundleMeta.from_dict(_meta().to_dict()) == _meta()


def test_rewriting_replaces_the_bundle_and_leaves_no_temporaries(bundle_dir: Path) -> None:
    old = load_bundle(bundle_dir).weights_hash
    write_bundle(bundle_dir, _generator(seed=1), _meta(chip_size=64))
    new = load_bundle(bundle_dir)
    assert new.weights_hash != old and new.meta.chip_size == 64
    assert [p.name for p in bundle_dir.parent.iterdir()] == ["model"]


def test_bundle_from_a_newer_format_is_refused(bundle_dir: Path) -> None:
    meta_path = bundle_dir / "model.json"
    data = json.loads(meta_path.read_text())
    data["format_version"] = FORMAT_VERSION + 1
    meta_path.write_text(json.dumps(data))
    with pytest.raises(
        BundleError,
        match=rf"newer p2p \(format {FORMAT_VERSION + 1} > {FORMAT_VERSION}\); upgrade p2p",
    ):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("missing", ["model.json", "weights.safetensors"])
def test_missing_files_are_named(bundle_dir: Path, missing: str) -> None:
    (bundle_dir / missing).unlink()
    with pytest.raises(BundleError, match=re.escape(f"{missing}: missing")):
        load_bundle(bundle_dir)


def test_missing_folder_is_a_bundle_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no such model folder"):
        load_bundle(tmp_path / "nowhere")


def test_truncated_weights_are_refused(bundle_dir: Path) -> None:
    weights = bundle_dir / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(BundleError, match="truncated or corrupt"):
        load_bundle(bundle_dir)
    # without the recorded checksum, safetensors itself must notice
    meta_path = bundle_dir / "model.json"
    data = json.loads(meta_path.read_text())
    del data["weights_sha256"]
    meta_path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="cannot be read: truncated or corrupt"):
        load_bundle(bundle_dir)


def test_weights_that_do_not_fit_the_architecture_are_refused(bundle_dir: Path) -> None:
    meta_path = bundle_dir / "model.json"
    data = json.loads(meta_path.read_text())
    data["model"]["ngf"] = 16
    meta_path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"do not fit the model described in model\.json"):
        load_bundle(bundle_dir)


def test_meta_must_match_the_generator(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 source band names for 3"):
        _meta(in_channels=3)
    with pytest.raises(ValueError, match="generator maps 2→1 bands"):
        write_bundle(tmp_path / "m", _generator(), _meta(out_channels=2, target_bands=["a", "b"]))
    assert not (tmp_path / "m").exists()


def test_sound_weights_are_hashed_once_and_a_rewritten_file_again(
    bundle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Predicting N scenes checks the weights before each scene and again when loading them:
    a file this process found sound is not read again until it changes (then a corrupt copy
    is refused as before); one just written is always hashed (its time may not have moved)."""
    hashed: list[Path] = []
    real = meta.sha256_file
    monkeypatch.setattr(meta, "sha256_file", lambda p: hashed.append(p) or real(p))
    monkeypatch.setattr(meta, "_sound", {})
    weights = bundle_dir / WEIGHTS
    read_ref(bundle_dir, verify=True)
    load_bundle(bundle_dir)
    assert len(hashed) == 2  # written moments ago: not remembered
    hour_ago = time.time_ns() - 3600 * 10**9
    os.utime(weights, ns=(hour_ago, hour_ago))
    for _ in range(3):
        read_ref(bundle_dir, verify=True)
        load_bundle(bundle_dir)
    assert len(hashed) == 3
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # same size, same file: only the modification time tells
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match the checksum"):
        read_ref(bundle_dir, verify=True)
    with pytest.raises(BundleError, match="does not match the checksum"):
        load_bundle(bundle_dir)
