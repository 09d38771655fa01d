"""The background stages of the prediction engine: a reader running ahead, a writer behind.

The strip loop (`p2p.infer.strips`) runs the model on the calling thread. `Prefetch` reads and
prepares the next windows on a thread of its own (GDAL decodes and numpy prepares without the
GIL), and `Writer` runs the finished strips' encoding, writing and commits on another, in the
order they were handed over. Both hold a bounded number of items, so memory stays flat
whatever the scene's size; with ``depth == 0`` both run inline on the caller's thread, the
sequential reference the threaded run must match byte for byte.

Failures: an exception on either thread is raised on the calling thread as the original
exception object, at its next hand-over; the threads are always joined when the ``with``
block ends (never daemons), after the writer has finished what was handed to it before the
failure, as the sequential loop would have.

The threads run in a copy of the caller's `contextvars` context (progress and log context) and
with the caller's rasterio/GDAL options (thread-local outside the main thread).
"""

from __future__ import annotations

import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Generic, TypeVar

import rasterio.env

T = TypeVar("T")

#: Poll interval (s) of a blocked hand-over, to notice a stop or a failure on the other side.
_POLL = 0.1


#: Options not copied to a worker thread: GDAL_CACHEMAX is process-wide already (a thread's Env
#: would reset it when it ends); AWS credentials come from a rasterio session, which refuses
#: them as options — a `SceneReader` enters its object-store session itself for each read.
_NOT_COPIED = {"GDAL_CACHEMAX", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}


def _gdal_options() -> dict[str, Any]:
    """The caller's rasterio options, to set again on a worker thread."""
    if not rasterio.env.hasenv():
        return {}
    return {k: v for k, v in rasterio.env.getenv().items() if k not in _NOT_COPIED}


def _start(
    target: Callable[[], None], name: str, failed: Callable[[BaseException], None]
) -> threading.Thread:
    """Start `target` on a thread in a copy of this thread's context and GDAL options.

    `failed` is handed whatever escapes (setting the GDAL options up included), so the other
    side of a hand-over always learns that this thread is gone instead of waiting for it.
    """
    context, options = contextvars.copy_context(), _gdal_options()

    def run() -> None:
        try:
            with rasterio.Env(**options) if options else contextlib.nullcontext():
                target()
        except BaseException as exc:
            failed(exc)

    thread = threading.Thread(target=context.run, args=(run,), name=name)
    thread.start()
    return thread


class Prefetch(Generic[T]):
    """Iterate `items` on a background thread, up to `depth` items ahead of the consumer.

    Args:
        items: What to produce, in order (advanced only by the background thread).
        depth: Items held ready at most; 0 produces each item inline when it is asked for.
        name: The thread's name.
    """

    def __init__(self, items: Iterator[T], depth: int, name: str = "p2p-reader") -> None:
        self._items = items
        self._queue: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._ended = False
        self._thread = _start(self._produce, name, self._failed) if depth > 0 else None

    def _failed(self, exc: BaseException) -> None:
        self._put((False, exc))

    def _produce(self) -> None:
        try:
            for item in self._items:
                if not self._put((True, item)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put((False, exc))
        else:
            self._put((False, None))

    def _put(self, entry: tuple[bool, Any]) -> bool:
        """Queue `entry`, waiting for room; False when the consumer has stopped."""
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._thread is None or self._ended:
            return next(self._items)  # inline; after the end, StopIteration again
        ok, value = self._queue.get()
        if ok:
            return value  # type: ignore[no-any-return]
        self._ended = True
        if value is None:
            raise StopIteration
        raise value

    def __enter__(self) -> Prefetch[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class Writer:
    """Run submitted tasks in order on a background thread, at most `2·depth` waiting.

    A task that raises stops the writer: later tasks are discarded, and the error is raised on
    the submitting thread by the next `submit`, or when the ``with`` block ends.

    Args:
        depth: Scale of the queue; 0 runs each task inline in `submit`.
        name: The thread's name.
    """

    def __init__(self, depth: int, name: str = "p2p-writer") -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=2 * depth)
        self._error: BaseException | None = None
        self._thread = _start(self._consume, name, self._failed) if depth > 0 else None

    def _failed(self, exc: BaseException) -> None:
        """The thread failed outside a task (its GDAL options): record it, then keep taking
        tasks off the queue (discarded) so that no `submit` blocks."""
        self._error = self._error or exc
        self._consume()

    def _consume(self) -> None:
        while True:
            task = self._queue.get()
            try:
                if task is None:
                    return
                if self._error is None:
                    task()
            except BaseException as exc:  # raised on the submitting thread
                self._error = exc
            finally:
                self._queue.task_done()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, task: Callable[[], None]) -> None:
        """Run `task` after those submitted before it (inline with depth 0)."""
        if self._thread is None:
            task()
            return
        self._check()
        self._queue.put(task)  # the writer consumes even after a failure: never stuck

    def __enter__(self) -> Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._thread is None:
            return
        self._queue.put(None)  # after the tasks already submitted: they run first
        self._thread.join()
        if exc_type is None:
            self._check()
