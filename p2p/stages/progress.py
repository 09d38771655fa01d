"""The progress protocol between stages and whoever shows progress.

A stage reports ``(done, total)`` through its `Progress` callback (`p2p.stages.stage`). A
runner that wraps stages (the Prefect tasks, the in-process runner) labels those reports and
hands them, as ``(label, done, total)``, to the sink set here; the command line sets a sink
that draws its progress bars or prints plain lines. The sink is a context variable, so a
thread or task started inside `use_sink` sees it and nothing global is mutated.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

#: (stage label, done, total) → None.
Sink = Callable[[str, int, int], None]

_sink: ContextVar[Sink | None] = ContextVar("p2p_progress_sink", default=None)


def report(label: str, done: int, total: int) -> None:
    """Hand one progress report to the current sink, if any."""
    sink = _sink.get()
    if sink is not None:
        sink(label, done, total)


@contextlib.contextmanager
def use_sink(sink: Sink) -> Iterator[None]:
    """Send every labelled progress report made inside the block to `sink`."""
    token = _sink.set(sink)
    try:
        yield
    finally:
        _sink.reset(token)
