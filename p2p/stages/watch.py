"""Every stage run is watched: a stall fails it, an interrupt stops it at its next report.

A stage reports progress, ``(done, total)``, as it goes (tile: blocks, train: steps, predict:
row strips). `run_watched` runs the stage in a thread of its own and waits on those reports:
when none has come for the stall limit (``watchdog_s`` of the config, set with `stall_after`),
the call fails with `Stalled`, one line naming the stage and how far it got, so a scheduled
run never waits forever (a tiling run once hung for good in a Dask deadlock; see
`p2p.core.dask_client.FRAMES_DEADLOCK`). The stalled thread is abandoned; should it ever
report again, its report raises and it ends.

`interrupt` (the CLI's Ctrl-C) makes the next progress report of every running stage raise
`Interrupted`; the stage's folder keeps what is done (training: the checkpoint of the last
finished epoch), so the same command resumes. A stage that does not report within
`INTERRUPT_GRACE_S` is abandoned the same way.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from p2p.core.errors import P2PError
from p2p.stages.stage import Progress

T = TypeVar("T")

#: The default stall limit: no progress report for this long fails a stage (seconds).
DEFAULT_STALL_S = 1800.0
#: How long an interrupted stage may take to reach its next progress report (seconds).
INTERRUPT_GRACE_S = 5.0

_stall_s: contextvars.ContextVar[float] = contextvars.ContextVar(
    "p2p_stall_s", default=DEFAULT_STALL_S
)
_interrupted = threading.Event()
_beat: contextvars.ContextVar[_Beat | None] = contextvars.ContextVar("p2p_beat", default=None)


class Stalled(P2PError):
    """A stage made no progress for the stall limit."""


class Interrupted(P2PError):
    """The run was interrupted (Ctrl-C); `where` is the stage, `at` how far it got."""

    def __init__(self, where: str, at: str) -> None:
        super().__init__(where, f"interrupted at {at}")
        self.stage = where
        self.at = at

    def line(self) -> str:
        """The one line the CLI prints."""
        return f"interrupted in {self.stage} ({self.at}); rerun the same command to resume"


@contextlib.contextmanager
def stall_after(seconds: float) -> Iterator[None]:
    """Stage runs started inside the block fail after `seconds` without progress (0: never)."""
    token = _stall_s.set(seconds)
    try:
        yield
    finally:
        _stall_s.reset(token)


def interrupt() -> None:
    """Stop every running stage at its next progress report (see the module docstring)."""
    _interrupted.set()


def clear_interrupt() -> None:
    """Forget an interrupt (a new run in the same process)."""
    _interrupted.clear()


class _Beat:
    """The progress callback a watched stage gets: records the time, forwards the report."""

    def __init__(self, label: str, unit: str, progress: Progress | None) -> None:
        self.label, self.unit, self.progress = label, unit, progress
        self.last = time.monotonic()
        self.done: int | None = None
        self.total: int | None = None
        self.where: str | None = None
        self.abandoned = False

    def at(self) -> str:
        if self.where is not None:
            return self.where
        if self.done is None:
            return f"no {self.unit} done yet"
        return f"{self.done} of {self.total} {self.unit}"

    def __call__(self, done: int, total: int) -> None:
        if _interrupted.is_set():
            raise Interrupted(self.label, self.at())
        if self.abandoned:
            raise Stalled(self.label, "abandoned after a stall")
        self.last = time.monotonic()
        self.done, self.total = done, total
        if self.progress is not None:
            self.progress(done, total)


def checkpoint() -> None:
    """Raise `Interrupted` in a watched stage after `interrupt` (for a stage waiting on
    something other than its own progress reports, such as training processes)."""
    beat = _beat.get()
    if beat is not None and _interrupted.is_set():
        raise Interrupted(beat.label, beat.at())


def where(text: str) -> None:
    """Say where the running stage is, in the words a user resumes by (``epoch 3 of 6``);
    named instead of the progress count when the stage stalls or is interrupted."""
    beat = _beat.get()
    if beat is not None:
        beat.where = text


def run_watched(
    label: str,
    unit: str,
    call: Callable[[Progress], T],
    progress: Progress | None = None,
    stall: bool = True,
) -> T:
    """Run ``call(beat)`` in a thread, failing on a stall or an interrupt (module docstring).

    Args:
        label: The stage label named in failures (``tile:scene_a``).
        unit: What the stage's progress counts (``blocks``, ``steps``, ``row strips``).
        call: Runs the stage with the progress callback it must report through.
        progress: Where reports go on to (a progress bar, a Prefect artifact), if anywhere.
        stall: Whether a stall fails it (False for a stage that reports no progress).

    Raises:
        Stalled: no report for the stall limit.
        Interrupted: `interrupt` was called while the stage ran.
    """
    beat = _Beat(label, unit, progress)
    limit = _stall_s.get() if stall else 0.0
    outcome: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        _beat.set(beat)
        try:
            outcome.append(call(beat))
        except BaseException as exc:  # handed to the waiting thread as it is
            failure.append(exc)

    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(target,), name=f"p2p-{label}", daemon=True)
    thread.start()
    since_interrupt: float | None = None
    while thread.is_alive():
        thread.join(timeout=0.2)
        now = time.monotonic()
        if _interrupted.is_set():
            since_interrupt = since_interrupt or now
            if now - since_interrupt > INTERRUPT_GRACE_S:
                beat.abandoned = True
                raise Interrupted(label, beat.at())
        elif limit > 0 and now - beat.last > limit:
            beat.abandoned = True
            raise Stalled(
                label,
                f"stalled: no progress for {limit:g} s at {beat.at()} (the watchdog_s setting)",
            )
    if failure:
        raise failure[0]
    return outcome[0]
