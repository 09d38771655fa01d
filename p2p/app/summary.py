"""The end of a run in words: what the user came for, from the run record alone.

A record (the `--json` object of `p2p run`, `p2p predict`, `p2p demo` and the flows) is
``{"pipeline": "train" | "predict", "workspace", "model", "output", "scenes", "stages":
{label: {"key", "path", "cached", "seconds"}}, "metrics", "seconds"}``; fields a record lacks
are left out of the summary. Plain lines, never a table cut at the terminal's width.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from p2p.core import storage


def summary_lines(record: dict[str, Any]) -> list[str]:
    """The summary of a training or prediction run (by ``pipeline``, else by its fields)."""
    predict = record.get("pipeline") == "predict" or (
        "pipeline" not in record and "output" in record and "metrics" not in record
    )
    return predict_lines(record) if predict else train_lines(record)


def _seconds(record: dict[str, Any]) -> float:
    if record.get("seconds") is not None:
        return float(record["seconds"])
    return float(sum(s.get("seconds", 0.0) for s in record.get("stages", {}).values()))


def stage_lines(stages: dict[str, dict[str, Any]]) -> list[str]:
    """One line per stage: label, cached or the seconds it ran, and its folder."""
    width = max((len(label) for label in stages), default=0)
    lines = []
    for label, s in stages.items():
        state = "cached" if s.get("cached") else f"ran {s.get('seconds', 0.0):.1f} s"
        lines.append(f"  {label:<{width}}  {state:<12}  {s.get('path', '')}")
    return lines


def train_lines(record: dict[str, Any]) -> list[str]:
    """Stages, then the bundle, the skill against the baselines and where the report is."""
    stages = record.get("stages", {})
    ran = sum(1 for s in stages.values() if not s.get("cached"))
    lines = [
        f"done in {_seconds(record):.1f} s: {ran} stage(s) ran, {len(stages) - ran} cached "
        f"(workspace {record.get('workspace')})",
        *stage_lines(stages),
    ]
    if record.get("model"):
        lines.append(f"model:  {record['model']}")
    metrics = record.get("metrics") or {}
    if record.get("pipeline") == "demo":  # held-out mosaic's metrics; training's under validation
        held = (metrics.get("overall") or {}).get("mae")
        if held is not None:
            lines.append(f"held-out mosaic: MAE {held:.4g} against its map")
        metrics = metrics.get("validation") or {}
    if metrics.get("baselines"):
        from p2p.infer.report import skill_line

        lines.append(f"skill:  {skill_line(metrics)}")
    elif (metrics.get("overall") or {}).get("mae") is not None:
        lines.append(f"skill:  MAE {metrics['overall']['mae']:.4g} (no baselines recorded)")
    report = record.get("report") or _evaluate_report(stages)
    if report:
        lines.append(f"report: {report}")
    return lines


def _evaluate_report(stages: dict[str, dict[str, Any]]) -> str | None:
    evaluation = stages.get("evaluate")
    if not evaluation:
        return None
    folder = evaluation.get("path", "")
    return f"{storage.join(folder, 'metrics.json')} (picture: validation.png beside it)"


def predict_lines(record: dict[str, Any]) -> list[str]:
    """The output (path, size), the time, and per scene whether it was cached or predicted."""
    output = str(record.get("output"))
    stages = record.get("stages", {})
    scenes = [(label.split(":", 1)[1], s) for label, s in stages.items() if ":" in label]
    predicted = sum(1 for _, s in scenes if isinstance(s, dict) and not s.get("cached"))
    lines = [
        f"wrote {output} ({_size(output)}) in {_seconds(record):.1f} s: "
        f"{predicted} scene(s) predicted, {len(scenes) - predicted} cached"
    ]
    for scene, s in scenes:
        if isinstance(s, dict):
            state = "cached" if s.get("cached") else f"predicted in {s.get('seconds', 0.0):.1f} s"
            lines.append(f"  {scene}: {state}")
    if record.get("uncertainty"):  # with --uncertainty
        lines.append(f"uncertainty: {record['uncertainty']}")
    if record.get("report"):  # the quicklook, with --quicklook
        lines.append(f"quicklook: {record['report']}")
    return lines


def _size(path: str) -> str:
    """A file's size in kB or MB."""
    if storage.is_remote(path):
        head = storage.head(path)
        size = None if head is None else head.get("ContentLength")
    else:
        size = Path(path).stat().st_size if Path(path).is_file() else None
    if size is None:
        return "size unknown"
    return f"{int(size) / 1e3:.1f} kB" if int(size) < 1e6 else f"{int(size) / 1e6:.1f} MB"
