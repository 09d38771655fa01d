"""Make two processes meet inside a stage's critical section, for the concurrency tests.

Each side installs `p2p.core.cache.LOCK_HOOKS` for one stage key (the folder both want). The
*holder*, inside that folder's lock (having found no manifest), announces that it is inside
and waits there until the *rival* has tried the lock, and then until the rival is inside too
or `HOLD_S` has passed. The rival, before it tries, waits until the holder is inside and
announces its try; once inside (past the lock and the manifest check) it says so.

With a lock the rival stays blocked for `HOLD_S`, the holder builds and commits, and the
rival finds its manifest. Without one the rival is inside while the holder still waits, so
both have found no manifest and both build: the tests fail every time, not when unlucky.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

from p2p.core import cache, files, storage

#: Seconds a side waits for the other before giving up (a broken test, not a hang).
PATIENCE_S = 120.0
#: Seconds the holder stays inside once the rival tried (the rival is blocked by then).
HOLD_S = 2.0


def _wait_for(path: Path, patience: float = PATIENCE_S) -> bool:
    deadline = time.monotonic() + patience
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def install(role: str, barrier: str | Path, key: str) -> None:
    """Install the hooks of `role` (``holder`` or ``rival``) in this process.

    Args:
        role: ``holder`` (waits inside the section) or ``rival`` (tries while it waits).
        barrier: A folder both sides share; the sides leave marker files there.
        key: The stage key (folder name) whose lock they meet at.
    """
    barrier = Path(barrier)
    barrier.mkdir(parents=True, exist_ok=True)

    def hook(event: str, folder: files.Location) -> None:
        if storage.name(folder) != key:
            return
        if role == "holder" and event == "locked":
            (barrier / "holder-inside").touch()
            if not _wait_for(barrier / "rival-tried"):
                raise TimeoutError("the rival never tried the lock")
            _wait_for(barrier / "rival-inside", HOLD_S)
        elif role == "rival" and event == "trying":
            if not _wait_for(barrier / "holder-inside"):
                raise TimeoutError("the holder never took the lock")
            (barrier / "rival-tried").touch()
        elif role == "rival" and event == "locked":
            (barrier / "rival-inside").touch()

    for event in ("trying", "locked"):
        cache.LOCK_HOOKS[event] = functools.partial(hook, event)
