"""What a pipeline run would do, without doing it: each stage cached, or to run and why.

The plan walks a pipeline's steps with a runner that only computes keys (`Stage.parts`) and
reads manifests. A stage whose folder has no manifest is explained against the stage's
finished runs in the workspace: the closest one (fewest differences) is diffed with the new
key parts, naming the settings (``train.epochs: 5 → 6``), the input files and the upstream
stages that changed — like ``make -n`` or ``dvc status``. It imports neither Prefect nor the
engines, so it answers in a fraction of a second.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from p2p.core import files, storage
from p2p.core.cache import (
    MANIFEST,
    KeyParts,
    StageRecord,
    canonical,
    read_manifest,
    stage_lock,
)
from p2p.core.errors import ConfigError
from p2p.core.fsutil import read_json
from p2p.stages.pipeline import Call, Pipeline, Records, run_steps
from p2p.stages.stage import Stage

Status = Literal["cached", "resume", "run"]


@dataclass(frozen=True)
class Planned:
    """One stage call of a plan.

    Attributes:
        label: The record label (``stage`` or ``stage:scene``).
        record: Its record: the manifest's when cached, else the key and folder it will have.
        parts: Its key parts.
        arguments: The call's arguments (upstream stages as planned records).
        status: ``cached``, ``resume`` (an unfinished folder is there) or ``run``.
        why: What changed since the closest finished run ("" when cached).
    """

    label: str
    record: StageRecord
    parts: KeyParts
    arguments: Mapping[str, Any]
    status: Status
    why: str


def plan(pipeline: Pipeline, job: Any, workspace: str, until: str | None = None) -> list[Planned]:
    """The plan of running `pipeline` on `job` in `workspace` (see the module docstring)."""
    found: list[tuple[str, Stage, dict[str, Any], KeyParts]] = []

    def runner(stage: Stage, ws: str, calls: Sequence[Call]) -> list[StageRecord]:
        records = []
        for label, arguments in calls:
            parts = stage.parts(arguments)
            folder = parts.folder(ws)
            manifest = read_manifest(folder)
            summary = manifest.get("summary", {}) if manifest else {}
            found.append((label, stage, arguments, parts))
            records.append(
                StageRecord(
                    stage=stage.name,
                    key=parts.key,
                    path=str(folder),
                    cached=manifest is not None,
                    seconds=0.0,
                    summary=summary,
                )
            )
        return records

    records = run_steps(pipeline, job, workspace, runner, until)
    labels = {r.key: label for label, r in records.items()}
    entries = []
    for label, _, arguments, parts in found:
        record = records[label]
        if record.cached:
            status: Status = "cached"
            why = ""
        elif files.has_files(record.path):
            status, why = "resume", "unfinished: resumes what an interrupted run left"
        else:
            status, why = "run", explain(parts, workspace, labels)
        entries.append(Planned(label, record, parts, arguments, status, why))
    return entries


def records_of(entries: Sequence[Planned]) -> Records:
    """label → record of a plan's entries."""
    return {e.label: e.record for e in entries}


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """A stage's settings as (``train.epochs``, value) pairs, nested mappings joined by dots."""
    if isinstance(value, dict) and value:
        for k, v in value.items():
            yield from flatten(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, value


def _file_of(fingerprint: str) -> str | None:
    """The path of a `fingerprint_file` value (``path:size:mtime``), else None."""
    head, *rest = fingerprint.rsplit(":", 2)
    return head if len(rest) == 2 and rest[0].isdigit() and rest[1].isdigit() else None


def changes(old: Mapping[str, Any], new: KeyParts, labels: Mapping[str, str]) -> list[str]:
    """What differs between a finished run's manifest and new key parts, by name.

    Args:
        old: A manifest of the same stage.
        new: The key parts of the run to come.
        labels: Upstream stage key → label, to name an upstream stage whose key changed.
    """
    found = []
    if old.get("version") != new.version:
        found.append(f"format version {old.get('version')} → {new.version}")
    before = dict(flatten(old.get("config")))
    after = dict(flatten(canonical(new.config)))
    for name in sorted(before.keys() | after.keys()):
        if before.get(name, "—") != after.get(name, "—"):
            found.append(f"{name or 'config'}: {before.get(name, '—')} → {after.get(name, '—')}")
    old_inputs, new_inputs = list(old.get("inputs", [])), list(new.inputs)
    old_files = {p for p in map(_file_of, old_inputs) if p is not None}
    new_files = {p for p in map(_file_of, new_inputs) if p is not None}
    for item in new_inputs:
        if item in old_inputs:
            continue
        path = _file_of(item)
        if item in labels:
            found.append(f"upstream {labels[item]} changed")
        elif path is not None:
            found.append(f"{path} {'changed on disk' if path in old_files else 'is new'}")
        else:
            found.append(f"input {item} is new")
    found += [f"{p} is no longer an input" for p in sorted(old_files - new_files)]
    return found


def explain(parts: KeyParts, workspace: str, labels: Mapping[str, str]) -> str:
    """Why a stage without a finished folder will run: the changes since its closest run."""
    previous = []
    for data in _manifests(files.join(workspace, parts.stage)):
        if isinstance(data, dict):
            previous.append(changes(data, parts, labels))
    if not previous:
        return "never built in this workspace"
    closest = min(previous, key=len)
    return "; ".join(closest) if closest else "its folder is gone"


def _manifests(stage_folder: files.Location) -> Iterator[Any]:
    """The manifests of a stage's finished runs in a workspace."""
    if not storage.is_remote(stage_folder):
        for path in sorted(Path(stage_folder).glob(f"*/{MANIFEST}")):
            yield read_json(path)
        return
    bucket, key = storage.split_url(str(stage_folder))
    pages = (
        storage.client()
        .get_paginator("list_objects_v2")
        .paginate(Bucket=bucket, Prefix=key.rstrip("/") + "/")
    )
    for page in pages:
        for item in page.get("Contents", []):
            if str(item["Key"]).count("/") == key.count("/") + 2 and str(item["Key"]).endswith(
                "/" + MANIFEST
            ):
                yield files.read_json(f"{storage.SCHEME}{bucket}/{item['Key']}")


def force(entries: Sequence[Planned], stage: str) -> list[str]:
    """Remove the finished folders of `stage` and of every stage that depends on it.

    Each folder is renamed away under its stage lock and then deleted, so a stage is either
    whole or absent (never half deleted and resumed); the next run rebuilds them.

    Returns:
        The labels of the stages that will rebuild.

    Raises:
        ConfigError: the workspace is on object storage, which has no rename to remove a
            folder whole (delete the stage's prefix by hand, then run again).
    """
    remote = [e.record.path for e in entries if storage.is_remote(e.record.path)]
    if remote:
        raise ConfigError(
            "--force",
            f"cannot remove stage folders on object storage whole ({remote[0]}); delete the "
            "stage's prefix with your S3 tools and run again",
        )
    forced = {stage}
    removed = []
    for entry in entries:
        if entry.record.stage in forced or _uses(entry.arguments, forced):
            forced.add(entry.record.stage)
            removed.append(entry.label)
            _remove(Path(entry.record.path))
    return removed


def _uses(arguments: Mapping[str, Any], stages: set[str]) -> bool:
    values = [v for a in arguments.values() for v in (a if isinstance(a, list) else [a])]
    return any(isinstance(v, StageRecord) and v.stage in stages for v in values)


def _remove(folder: Path) -> None:
    with stage_lock(folder):
        if folder.is_dir():
            trash = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.forced")
            folder.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
