"""Stage keys, manifests and atomic writes: the contract every stage caches by."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from p2p.core.cache import KeyParts, fingerprint_file, read_manifest, run_stage, stage_key
from p2p.core.config import TrainConfig
from p2p.core.fsutil import atomic_path, atomic_write_json


def test_key_changes_with_config_version_and_inputs() -> None:
    base = stage_key("train", 1, TrainConfig(), ["abc"])
    assert base == stage_key("train", 1, TrainConfig(), ["abc"])
    assert base != stage_key("train", 1, TrainConfig(epochs=3), ["abc"])
    assert base != stage_key("train", 2, TrainConfig(), ["abc"])
    assert base != stage_key("train", 1, TrainConfig(), ["abd"])
    assert base != stage_key("tile", 1, TrainConfig(), ["abc"])


def test_file_fingerprint_tracks_content_changes(tmp_path: Path) -> None:
    f = tmp_path / "a.tif"
    f.write_bytes(b"1234")
    loose, strict = fingerprint_file(f), fingerprint_file(f, strict=True)
    f.write_bytes(b"12345")
    assert fingerprint_file(f) != loose
    assert fingerprint_file(f, strict=True) != strict


def test_finished_stage_is_returned_without_rebuilding(tmp_path: Path) -> None:
    calls: list[Path] = []

    def build(folder: Path) -> dict[str, int]:
        calls.append(folder)
        (folder / "out.txt").write_text("x")
        return {"n": 1}

    first = run_stage(tmp_path, KeyParts("demo", 1, {"a": 1}, []), build)
    second = run_stage(tmp_path, KeyParts("demo", 1, {"a": 1}, []), build)
    assert not first.cached and second.cached
    assert len(calls) == 1 and second.summary == {"n": 1}
    assert read_manifest(first.path) is not None


def test_failed_build_leaves_no_manifest_and_resumes(tmp_path: Path) -> None:
    attempts: list[bool] = []

    def build(folder: Path) -> dict[str, bool]:
        resumed = (folder / "part").exists()
        attempts.append(resumed)
        (folder / "part").write_text("half")
        if not resumed:
            raise OSError("disk full")
        return {"resumed": resumed}

    with pytest.raises(OSError):
        run_stage(tmp_path, KeyParts("demo", 1, None, []), build)
    record = run_stage(tmp_path, KeyParts("demo", 1, None, []), build)
    assert attempts == [False, True] and record.summary == {"resumed": True}


def test_concurrent_runs_build_once(tmp_path: Path) -> None:
    built: list[int] = []

    def build(folder: Path) -> dict[str, int]:
        built.append(1)
        return {}

    threads = [
        threading.Thread(target=run_stage, args=(tmp_path, KeyParts("demo", 1, None, []), build))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("killed")
    assert target.read_text().strip().startswith("{") and '"v": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_atomic_write_failing_rename_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="No space"):
        atomic_write_json(tmp_path / "manifest.json", {"v": 1})
    assert list(tmp_path.iterdir()) == []


def test_resumed_stage_sweeps_a_killed_writers_temporaries(tmp_path: Path) -> None:
    def killed(folder: Path) -> dict[str, int]:
        (folder / "keep.partial").write_text("resumable work")
        (folder / ".pred.tif.ab12cd_9.tmp.tif").write_text("half a COG")
        (folder / "sub").mkdir()
        (folder / "sub" / ".ckpt.pt.x7y8z9.tmp").write_text("half a checkpoint")
        (folder / ".model.k2j4h5g6.tmp").mkdir()  # a bundle folder killed mid-write
        (folder / ".model.k2j4h5g6.tmp" / "weights.safetensors").write_text("half")
        raise KeyboardInterrupt  # the process dies here

    with pytest.raises(KeyboardInterrupt):
        run_stage(tmp_path, KeyParts("demo", 1, None, []), killed)

    seen: list[str] = []

    def resumed(folder: Path) -> dict[str, int]:
        seen.extend(sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()))
        return {}

    run_stage(tmp_path, KeyParts("demo", 1, None, []), resumed)
    assert seen == ["keep.partial"]
