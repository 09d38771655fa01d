"""What every p2p task shares: retries, progress and record artifacts.

Results are never persisted by Prefect (no pickles, nothing for Prefect to read back): the
stage's manifest is the source of truth, and a cached stage returns its record in
milliseconds, so the task simply runs again and reports itself as Cached.
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any, cast
from uuid import UUID

from prefect.artifacts import (
    create_image_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.client.schemas.objects import State

from p2p.core.cache import StageRecord
from p2p.core.errors import P2PError
from p2p.stages import progress
from p2p.stages.record import record_markdown
from p2p.stages.stage import StageReport


def transient_failure(_task: Any, _run: Any, state: State[Any]) -> bool:
    """`retry_condition_fn`: retry I/O hiccups, never a `P2PError` (bad input stays bad)."""
    try:
        state.result()
    except P2PError:
        return False
    except Exception:
        return True
    return True


def artifact_key(*parts: str) -> str:
    """An artifact key Prefect accepts (lowercase letters, digits, dashes)."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower())).strip("-")


class StageProgress:
    """A progress callback (done, total) that feeds a Prefect progress artifact and the CLI.

    The artifact is created only at a report `interval` seconds or more after the first one
    (then updated about once per `interval`, and at the end): each artifact call is a round
    trip to the Prefect server made in the stage's own threads, blocking the work it reports
    on (three calls, 40-60 ms, in a 0.5 s prediction on a busy 2-core machine). So a stage
    that finishes within the interval publishes no progress, only its result
    (`publish_record`), and a cached stage publishes none; a long one shows its progress in
    the UI as before.

    Args:
        label: The stage's label (``predict-scene_a``): the artifact's description.
        key: The artifact key.
        interval: Seconds before the artifact appears, and between its updates.
    """

    def __init__(self, label: str, key: str, interval: float = 1.0) -> None:
        self.label = label
        self.key = key
        self.interval = interval
        self._artifact: UUID | None = None
        self._start: float | None = None
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self._start is None:
            self._start = self._last = now
        percent = 100.0 * done / max(total, 1)
        if self._artifact is None:
            if now - self._start >= self.interval:
                created = create_progress_artifact(percent, key=self.key, description=self.label)
                self._artifact = cast(UUID, created)
                self._last = now
        elif done >= total or now - self._last >= self.interval:
            update_progress_artifact(self._artifact, percent)
            self._last = now
        progress.report(self.label, done, total)


def _scalar(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)


def folded(report: StageReport, record: StageRecord, label: str) -> StageReport:
    """`report` with the stage's record (key, cached, seconds, folder) as its last section, so
    a stage that reports publishes one card, not a report and a table beside it."""
    state = "cached" if record.cached else f"built in {record.seconds:.1f} s"
    section = f"\n\n## Stage {label}\n\n{state}; key `{record.key}`, folder `{record.path}`\n"
    return dataclasses.replace(report, markdown=report.markdown.rstrip("\n") + section)


def publish_record(record: StageRecord, label: str) -> None:
    """A table artifact of one stage result: key, cached, seconds, folder and summary fields."""
    rows: list[dict[str, Any]] = [
        {"field": "stage", "value": label},
        {"field": "key", "value": record.key},
        {"field": "cached", "value": record.cached},
        {"field": "seconds", "value": record.seconds},
        {"field": "path", "value": record.path},
    ]
    rows += [
        {"field": k, "value": _scalar(v)}
        for k, v in sorted(record.summary.items())
        if not isinstance(v, dict | list)
    ]
    create_table_artifact(
        rows, key=artifact_key("p2p", label), description=f"{label}: stage result"
    )


def publish_stage_report(report: StageReport | None) -> None:
    """A stage's own report (training, evaluation, the demo's) as a Markdown artifact."""
    if report is None:
        return
    create_markdown_artifact(report.markdown, key=report.key, description=report.title)
    if report.image is not None:
        create_image_artifact(report.image, key=f"{report.key}-picture")


def publish_run(record: dict[str, Any], flow_name: str) -> None:
    """The run record as a Markdown report: what was delivered, then every stage."""
    create_markdown_artifact(
        record_markdown(record),
        key=artifact_key("p2p", flow_name, "run"),
        description=f"{flow_name}: run record",
    )
