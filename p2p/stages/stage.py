"""The stage abstraction: a name, a format version, key parts and a run function.

Each module of `p2p.stages` declares one `Stage`. Its `key_parts` takes the run function's
arguments that decide the artifacts, by the same names (upstream stages as records, so a plan
can pass records of stages that have not run yet); `run` computes the parts once and hands
them to `p2p.core.cache.run_stage`. Everything else (the plan, the Prefect tasks, the CLI's
fully cached fast path, `--force`) derives keys and folders through `Stage.parts`, so no
second spelling of a key exists.

A stage also declares how it appears to an orchestrator: its task name, how often an I/O
failure is retried, and the report it publishes. The Prefect task table is derived from these
declarations (`tasks.stages`), so a new stage is one module plus one line in its pipeline.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from p2p.core.cache import KeyParts, StageRecord

#: (done, total) → None: how a stage reports progress (blocks, steps, strips).
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class StageReport:
    """A report a stage publishes beside its record (the Prefect UI shows it as an artifact).

    Attributes:
        key: Artifact key (lowercase letters, digits, dashes).
        title: One-line description.
        markdown: The report.
        image: A picture file to publish as well, if any.
    """

    key: str
    title: str
    markdown: str
    image: str | None = None


#: (record, the call's arguments) → the stage's report, or None.
Reporter = Callable[[StageRecord, Mapping[str, Any]], StageReport | None]


@dataclass(frozen=True)
class Stage:
    """One cached step of a pipeline.

    Attributes:
        name: Stage name; also the workspace subfolder, ``{workspace}/{name}/{key}/``.
        version: Artifact format version; bump it when the artifacts change meaning.
        key_parts: Arguments (a subset of `run`'s, same names) → the key's parts.
        run: ``run(workspace, **arguments) -> StageRecord``; cached, resumable, locked.
        task: Task name in an orchestrator's UI (e.g. ``tile-scene``).
        gpu: Whether the stage wants the accelerator (tags the Prefect task).
        retries: Retries of a transient (I/O) failure; bad input is never retried.
        report: The report published once the stage returned, if any.
        unit: What its progress reports count, named when it stalls (`p2p.stages.watch`).
    """

    name: str
    version: int
    key_parts: Callable[..., KeyParts]
    run: Callable[..., StageRecord]
    task: str
    gpu: bool = False
    retries: int = 0
    report: Reporter | None = None
    unit: str = "steps"

    def run_watched(
        self, label: str, arguments: Mapping[str, Any], progress: Progress | None = None
    ) -> StageRecord:
        """``run(**arguments)`` under the stall watchdog and Ctrl-C (`p2p.stages.watch`).

        A stage that reports progress fails after the stall limit without a report; one that
        does not (dataset, evaluate) is only stopped by an interrupt.
        """
        from p2p.stages.watch import run_watched

        if "progress" not in inspect.signature(self.run).parameters:
            return run_watched(label, self.unit, lambda _: self.run(**arguments), stall=False)
        return run_watched(
            label, self.unit, lambda beat: self.run(**arguments, progress=beat), progress
        )

    def parts(self, arguments: Mapping[str, Any]) -> KeyParts:
        """The key parts of a call with these arguments (extra arguments are ignored)."""
        wanted = inspect.signature(self.key_parts).parameters
        return self.key_parts(**{name: arguments[name] for name in wanted})
