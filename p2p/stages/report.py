"""Stage `report`: a mosaic scored against its reference → ``{workspace}/report/{key}/``.

The folder gets ``report.png`` (input | prediction | target) and ``report.md`` (the metrics
table); both are copied to the workspace root, which holds the latest report.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from p2p.core.cache import KeyParts, StageRecord, fingerprint_file, run_stage
from p2p.core.fsutil import atomic_write_text
from p2p.stages.stage import Stage, StageReport

NAME = "report"
VERSION = 1
BANDS = ("red", "green", "blue")


def key_parts(mosaic: str, source: str, target: str) -> KeyParts:
    """The mosaic's and the references' fingerprints."""
    inputs = [fingerprint_file(p) for p in (mosaic, source, target)]
    return KeyParts(NAME, VERSION, {"bands": len(BANDS)}, inputs)


def run(workspace: str | Path, mosaic: str, source: str, target: str) -> StageRecord:
    """Evaluate `mosaic` against `target` and draw source | mosaic | target (RGB rasters).

    Args:
        workspace: Workspace root.
        mosaic: The predicted mosaic.
        source: The input raster over the mosaic's extent.
        target: The reference raster over the mosaic's extent.

    Returns:
        The record; summary holds ``metrics`` (per band and overall, target units).
    """
    from p2p.infer.evaluation import evaluate
    from p2p.infer.report import comparison_png, deliver_file, metrics_markdown, read_display

    parts = key_parts(mosaic, source, target)

    def build(folder: Path) -> dict[str, Any]:
        metrics = evaluate(mosaic, target)
        panels = [
            ("input (satellite)", read_display(source)),
            ("prediction", read_display(mosaic)),
            ("target (map)", read_display(target)),
        ]
        comparison_png(folder / "report.png", panels)
        table = metrics_markdown(metrics, list(BANDS))
        text = (
            "# p2p demo: held-out mosaic\n\n![input | prediction | target](report.png)\n\n"
            f"Two overlapping held-out scenes, predicted and mosaicked: `{mosaic}`.\n\n"
            f"Metrics against the map (8-bit units; PSNR in dB):\n\n{table}\n"
        )
        atomic_write_text(folder / "report.md", text)
        return {"metrics": metrics}

    record = run_stage(workspace, parts, build)
    for name in ("report.png", "report.md"):  # the workspace root holds the latest report
        deliver_file(Path(record.path) / name, Path(workspace) / name)
    return record


def report(record: StageRecord, arguments: Mapping[str, Any]) -> StageReport:
    """The demo report: held-out mosaic vs map, as markdown with its picture."""
    markdown = Path(record.path, "report.md").read_text()
    picture = str(Path(arguments["workspace"]) / "report.png")
    return StageReport("p2p-demo-report", "Demo: held-out mosaic vs map", markdown, picture)


STAGE = Stage(NAME, VERSION, key_parts, run, task="demo-report", report=report)
