"""Pixels that do not depend on the thread count: window-parallel forwards on CPU.

oneDNN's CPU convolutions split their sums across torch's intra-op threads, and the split
depends on the count: the U-Net's transposed convolutions give results one float32 unit apart
on 3 threads against 1 or 2 (`tests/test_determinism.py`), and after the cast to the target's
dtype such a difference moves a value lying on a rounding boundary by one unit. The thread
budget gives a process a count that follows its cores, its task slots and the machine's load,
so a CLI run, a Dask task and a resumed run could each write other bytes for the same model,
scene and settings.

On CPU the generator therefore computes on one intra-op thread, and the budget's threads run
parts of the batch side by side instead (`WindowParallel`). On one thread oneDNN gives each
window the same pixels whatever batch it is in (checked for U-Nets of ngf 8–64, 5–8 levels,
tiles 64–512, 1–6 bands, batches split 1 to 8 ways; `tests/test_determinism.py` keeps a
case), so a window's pixels depend on nothing but the window and the weights: not the thread
count, the batch size, nor what else the process computes. Threads that never meet at a
barrier also keep working on a machine busy with other work. Speed against torch's own
intra-op threads: `benchmarks/forward.py`, table in `docs/measurements.md`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

_lock = threading.Lock()
_depth = 0
_restore = 1
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _forward_pool(workers: int) -> ThreadPoolExecutor:
    """The process's forward threads, at least `workers` of them: one pool for every scene,
    kept like torch's own OpenMP threads (idle threads wait on a queue and cost nothing)."""
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size < workers:
            # not shut down: a scene may be about to hand it work; its threads end when the
            # last reference to it goes (ThreadPoolExecutor wakes them on collection)
            _pool = ThreadPoolExecutor(workers, thread_name_prefix="p2p-forward")
            _pool_size = workers
        return _pool


def intra_op_budget() -> int:
    """torch's intra-op thread count outside `one_intra_op_thread` (the thread budget's)."""
    with _lock:
        return _restore if _depth else torch.get_num_threads()


@contextlib.contextmanager
def one_intra_op_thread() -> Iterator[None]:
    """torch computes on one intra-op thread inside; the count before comes back when the last
    of the threads inside leaves (scenes predicted concurrently share it)."""
    global _depth, _restore
    with _lock:
        if _depth == 0:
            _restore = torch.get_num_threads()
            torch.set_num_threads(1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                torch.set_num_threads(_restore)


class WindowParallel:
    """`module` applied to a batch on one intra-op thread, in `workers` parts side by side.

    Args:
        module: `(n, C_in, h, w)` → `(n, C_out, h, w)`, in eval mode.
        workers: Parts of a batch computed side by side (the thread budget's intra-op count).
    """

    def __init__(self, module: torch.nn.Module, workers: int) -> None:
        self.module = module
        self.workers = max(1, workers)

    def _one(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # grad mode is per thread
            y: torch.Tensor = self.module(x)
        return y

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """`(N, C_in, h, w)` → `(N, C_out, h, w)`.

        The batch is made C-contiguous first: oneDNN takes another code path (and sums in
        another order) for a channels-last batch, which numpy hands over where windows were
        gathered at a scene's edge; contiguous is also faster (1.2x for a U-Net ngf 64).
        """
        x = x.contiguous()
        parts = x.tensor_split(min(self.workers, len(x)))
        with one_intra_op_thread():
            if len(parts) == 1:
                return self._one(x)
            return torch.cat(list(_forward_pool(self.workers).map(self._one, parts)))
