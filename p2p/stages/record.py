"""The record of a pipeline run: one shape for every pipeline and every runner.

`p2p run --json`, `p2p predict --json`, `p2p demo --json`, the `train_pipeline`,
`batch_predict` and demo flows and the Python API all return a `RunRecord` (as a dict). Its
JSON schema is published as docs/record.schema.json (`make docs`); tests validate the CLI's and
the flows' records against this model.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from p2p.core.cache import StageRecord


class StageEntry(BaseModel):
    """One stage call of a run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(description="The stage key: sha256 of what produced the artifacts.")
    path: str = Field(description="The stage folder, {workspace}/{stage}/{key}.")
    cached: bool = Field(description="True when the stage found its artifacts and did no work.")
    seconds: float = Field(description="Wall time of this call (a cached stage: milliseconds).")


class RunRecord(BaseModel):
    """What a pipeline run did and produced."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pipeline: Literal["train", "predict", "demo"] = Field(description="Which pipeline ran.")
    workspace: str = Field(description="The workspace every stage cached its artifacts in.")
    model: str | None = Field(
        description="The model bundle folder: trained (train, demo) or used (predict); null "
        "when the run stopped before training."
    )
    output: str | None = Field(
        description="Where the product was delivered (the mosaic of `predict`); null for train."
    )
    uncertainty: str | None = Field(
        default=None,
        description="Where the per-pixel uncertainty raster was delivered beside `output` "
        "(`predict.uncertainty`: the spread across the test-time symmetries); null otherwise.",
    )
    written: bool | None = Field(
        description="True when `output` was (re)written, false when it already held the same "
        "bytes; null when nothing is delivered."
    )
    scenes: list[str] = Field(description="The scene ids the run worked on, in order.")
    stages: dict[str, StageEntry] = Field(
        description="Every stage call, in run order, by label: the stage name, or "
        "`stage:scene_id` for a stage that runs once per scene."
    )
    metrics: dict[str, Any] = Field(
        description="Train: the evaluation metrics (validation split, target units, with the "
        "baselines); demo: the held-out mosaic's metrics, and the training run's under "
        "`validation`; predict: empty."
    )
    seconds: float = Field(description="Wall time of the run, checks and delivery included.")
    report: str | None = Field(default=None, description="The report picture, where one is made.")


def stage_entry(record: StageRecord) -> dict[str, Any]:
    """The record's view of one stage call: key, path, cached, seconds."""
    return StageEntry(
        key=record.key, path=record.path, cached=record.cached, seconds=record.seconds
    ).model_dump()


def record_schema() -> str:
    """The JSON schema of `RunRecord`, as committed in docs/record.schema.json."""
    return json.dumps(RunRecord.model_json_schema(), indent=2, sort_keys=True) + "\n"


def record_markdown(record: dict[str, Any]) -> str:
    """A run record as a Markdown report: what was delivered, then every stage."""
    lines = [f"# {record['pipeline']} run\n", f"Workspace: `{record['workspace']}`  "]
    if record.get("model"):
        lines.append(f"Model: `{record['model']}`  ")
    if record.get("output"):
        state = "written" if record.get("written") else "unchanged"
        lines.append(f"Output: `{record['output']}` ({state})  ")
    lines.append(f"Scenes: {', '.join(record['scenes']) or '-'}  ")
    lines.append(f"Seconds: {record['seconds']:.1f}\n")
    lines.append("| stage | cached | seconds | folder |\n|---|---|---|---|")
    for label, s in record["stages"].items():
        cached = "yes" if s["cached"] else "no"
        lines.append(f"| {label} | {cached} | {s['seconds']:.1f} | `{s['path']}` |")
    return "\n".join(lines) + "\n"
