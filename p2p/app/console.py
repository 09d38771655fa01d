"""How the CLI runs a flow: Prefect's console noise turned down, rich progress bars on stderr.

Prefect reads its logging settings when it is first imported, so `quiet_prefect` must run
before anything imports `prefect`; the CLI calls it first thing in `run` and `demo`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO


def quiet_prefect(debug: bool = False) -> None:
    """Keep Prefect's console to what a CLI user needs (everything with `debug`).

    Runs still log in full to the Prefect API (the UI); p2p's own loggers are added to what
    Prefect forwards there. Values the user has already set win.
    """
    defaults = {
        "PREFECT_LOGGING_EXTRA_LOGGERS": "p2p",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "DEBUG" if debug else "CRITICAL",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    }
    for name, value in defaults.items():
        os.environ.setdefault(name, value)
    # Prefect sets its loggers (and p2p's, as an extra logger) to INFO; their records still
    # reach the API, but the CLI's own stderr handler shows only warnings unless --debug.
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.DEBUG if debug else logging.WARNING)
        if not debug:
            # A failed task or flow is reported once, as the CLI's one-line error; Prefect's
            # own records (with tracebacks) still reach the API and the UI.
            handler.addFilter(_drop_prefect_records)


def _drop_prefect_records(record: logging.LogRecord) -> bool:
    return not record.name.startswith("prefect")


#: Seconds after which a plain progress line is printed even within one tenth of a stage.
PLAIN_EVERY_S = 30.0


def plain_progress(stream: TextIO | None = None) -> Callable[[str, int, int], None]:
    """A progress sink for logs and pipes: one plain line when a stage starts, at each tenth
    of its work and when it ends, and at least every `PLAIN_EVERY_S` seconds in between (a
    long training epoch shows it is alive).

    Args:
        stream: Where the lines go (stdout when None: the run's log, never stderr, which
            holds at most the one error line).
    """
    shown: dict[str, tuple[int, float, float]] = {}  # label → (tenth, start, last line)
    out = stream if stream is not None else sys.stdout  # now: rich's live bars redirect it

    def sink(label: str, done: int, total: int) -> None:
        now = time.monotonic()
        last, start, printed = shown.get(label, (-1, now, now))
        tenth = 10 * done // max(total, 1)
        if tenth <= last and now - printed < PLAIN_EVERY_S:
            return
        shown[label] = (max(tenth, last), start, now)
        percent = 100 * done // max(total, 1)
        out.write(f"{label}: {done}/{total} ({percent}%) {now - start:.1f} s\n")
        out.flush()

    return sink


@contextlib.contextmanager
def console_progress_bars(plain: bool = True) -> Iterator[None]:
    """Show one rich progress bar per long stage (tiling a scene, training, predicting) when
    stderr is a terminal, and plain progress lines on stdout (`plain_progress`) when either
    is not (a log: ``p2p run > run.log``), unless not `plain` (``--json`` keeps stdout to its
    record)."""
    from p2p.stages.progress import use_sink

    lines = plain_progress() if plain and log_output() else None
    if not sys.stderr.isatty():
        with use_sink(lines) if lines else contextlib.nullcontext():
            yield
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    bars = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(file=sys.stderr),
        transient=False,
        redirect_stdout=False,  # stdout is the log's: plain lines and the record
    )
    ids: dict[str, int] = {}

    def sink(label: str, done: int, total: int) -> None:
        if label not in ids:
            ids[label] = int(bars.add_task(label, total=total))
        bars.update(ids[label], completed=done, total=total)  # type: ignore[arg-type]
        if lines is not None:
            lines(label, done, total)

    with use_sink(sink), bars:
        yield


def log_output() -> bool:
    """Whether progress should also go to stdout as plain lines: stdout or stderr is not a
    terminal (a file, a pipe, a CI log)."""
    return not (sys.stdout.isatty() and sys.stderr.isatty())


@contextlib.contextmanager
def ctrl_c_stops_stages() -> Iterator[None]:
    """Ctrl-C stops the running stages at their next progress report (`p2p.stages.watch`).

    The first Ctrl-C asks every stage to stop (training keeps the checkpoint of its last
    finished epoch); the flow then fails with `Interrupted`, which the command prints as one
    line. A second Ctrl-C stops the whole process group at once (SIGTERM).

    SIGINT is blocked in this thread while the block runs, so every thread and process
    started inside it inherits the block: above all Prefect's temporary server, which a
    terminal's Ctrl-C (sent to the whole process group) used to stop first, so that every
    later client call failed with a ConnectError traceback. The server now stops last, at
    exit. One thread of ours takes the signal: Python's C handler, in whichever thread the
    signal lands, writes it to a wakeup pipe that thread reads (the main thread, blocked on
    the flow, would run a Python handler only once the flow returned).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from p2p.stages.watch import clear_interrupt, interrupt

    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)

    def waiter() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        presses = 0
        while data := os.read(read_end, 64):
            presses += data.count(signal.SIGINT)
            if presses == 1:
                interrupt()
            elif presses > 1:
                os.killpg(0, signal.SIGTERM)
        os.close(read_end)

    previous = signal.signal(signal.SIGINT, lambda *_: None)  # the pipe is the handler
    previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    threading.Thread(target=waiter, name="p2p-ctrl-c", daemon=True).start()
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGINT, previous)
        os.close(write_end)  # the waiter reads end-of-file and ends
        clear_interrupt()
