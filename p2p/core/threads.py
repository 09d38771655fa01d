"""The thread budget: how many threads each p2p process and task computes with.

A process may use the cores of its CPU affinity, capped by its cgroup's CPU quota (a container
limited to 2 CPUs on a 64-core host may use 2, not 64); never the machine's core count. A
process alone (one slot) takes only the cores other running work leaves free (the runnable
threads of ``/proc/loadavg`` right now, beyond its own; at least 1): two threads that must
meet at every barrier on cores held by other busy processes wait for each other's time slices
(a training epoch beside two busy processes on 2 cores: 141 s with 2 threads, 27 s with 1).
Those cores are divided among what runs at once in the process or on the machine: a Dask
worker's task slots, DDP ranks on one node. DataLoader workers compute with one thread each
(they only read and augment chips), and the training process keeps the budget.

``P2P_CORES`` in the environment caps the cores a process may use (never beyond affinity and
quota; a bad value is ignored). The Dask worker processes p2p starts are each given their
share of the machine in it (cores // workers), since each would otherwise count all the
machine's cores as its own. A task on workers p2p did not start (``dask.address``) and
without ``P2P_CORES`` divides its process's cores by the task slots of every worker on its
host, as the scheduler knows them (`worker_slots`; one round trip, cached a minute).

`apply_budget` sets the result where each library reads it: torch's intra-op threads (when
torch is loaded; otherwise ``OMP_NUM_THREADS`` makes torch start with it, so a process that
never needs torch does not import it), GDAL's ``GDAL_NUM_THREADS`` (its multi-threaded
encoders and decoders; GDAL reads config options from the environment at each use), and
``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` for child processes.
OpenMP threads that wait at a barrier sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``,
set when `p2p` is imported, before torch can load): on cores shared with other busy
processes, a spinning thread steals the time the thread it waits for needs (the pathology
that made `p2p predict` 10x slower beside other work).

A setting overrides the auto budget: ``threads:`` in a config file, ``--threads`` on the CLI,
or ``P2P_THREADS`` in the environment (what the first two hand down to child processes).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from distributed import Worker

log = logging.getLogger(__name__)

#: The environment variable carrying an explicit thread count to child processes.
ENV = "P2P_THREADS"
#: The environment variable capping the cores a process may use (a Dask worker's share).
CORES_ENV = "P2P_CORES"
#: Seconds a worker trusts its count of the task slots on its host (one scheduler round trip).
HOST_SLOTS_TTL_S = 60.0
#: Seconds a worker waits for the scheduler's answer before counting its own slots alone.
HOST_SLOTS_TIMEOUT_S = 5.0
#: Where the cgroup (v2 unified, or v1 cpu controller) of this process is mounted.
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: Environment variables that size OpenMP, MKL and OpenBLAS pools in child processes.
_POOL_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: Per worker address: when its host's task slots were counted, and the count.
_HOST_SLOTS: dict[str, tuple[float, int]] = {}


def affinity_cores() -> int:
    """Cores in this process's CPU affinity mask (all online cores where none is set)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.process_cpu_count() or 1) if hasattr(os, "process_cpu_count") else 1


def cgroup_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of the cgroup mounted at `root`, in cores (None: unlimited or unknown).

    cgroup v2 writes ``<quota> <period>`` (or ``max <period>``) in ``cpu.max``; v1 writes the
    quota (-1: none) and the period in ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us``.
    """
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for folder in (root / "cpu", root / "cpu,cpuacct", root):
        try:
            quota_us = int((folder / "cpu.cfs_quota_us").read_text())
            period_us = int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    return None


def available_cores(root: Path = CGROUP_ROOT) -> int:
    """Cores this process may use: its affinity, capped by its cgroup quota (rounded up, at
    least 1) and by ``P2P_CORES`` (`cores_from_env`)."""
    cores = affinity_cores()
    quota = cgroup_quota(root)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    cap = cores_from_env()
    return cores if cap is None else min(cores, cap)


def _positive_env(name: str) -> int | None:
    """The positive integer in environment variable `name` (None when unset or not one)."""
    value = os.environ.get(name, "").strip()
    if not (value.isascii() and value.isdigit()):
        return None
    return int(value) or None


def cores_from_env() -> int | None:
    """The cores this process was given in ``P2P_CORES`` (None when unset or bad): a Dask
    worker's share of its machine, or a user's cap."""
    return _positive_env(CORES_ENV)


@dataclass(frozen=True)
class ThreadBudget:
    """Threads one task of this process computes with.

    Attributes:
        cores: Cores the process may use (`available_cores`), or the setting.
        slots: Tasks or processes sharing those cores at once.
        torch: torch intra-op threads (and OpenMP/MKL pools) per task.
        gdal: GDAL threads (compression, decoding) per task.
        explicit: Whether a setting (not the auto budget) chose `torch`.
    """

    cores: int
    slots: int
    torch: int
    gdal: int
    explicit: bool


def pool_threads_from_env() -> int | None:
    """The intra-op count `apply_budget` wrote for the OpenMP pools (``OMP_NUM_THREADS``;
    None when unset or bad): what a runtime other than torch computes with in this process."""
    return _positive_env(_POOL_VARS[0])


def setting_from_env() -> int | None:
    """The explicit thread count handed down in ``P2P_THREADS`` (None when unset or bad)."""
    return _positive_env(ENV)


def busy_elsewhere(samples: int = 5, root: Path = Path("/proc")) -> int:
    """Threads running on the machine besides this one, now: the fewest runnable threads
    (``/proc/loadavg``'s 4th field) over `samples` reads 10 ms apart, minus this one; where
    some run, only those at this process's priority or above count (`_runnable_at_priority`:
    niced background work yields its cores to us).

    The instantaneous count, not the load average: the average lags a minute and still holds
    the load of a p2p process that just ended. 0 where it cannot be read.
    """
    counts = []
    for i in range(samples):
        try:
            counts.append(int((root / "loadavg").read_text().split()[3].split("/")[0]))
        except (OSError, ValueError, IndexError):
            return 0
        if counts[-1] <= 1:  # this thread alone: the fewest cannot go lower (no sleeps)
            return 0
        if i + 1 < samples:
            time.sleep(0.01)
    others = max(0, min(counts) - 1)
    if others == 0:
        return 0
    scanned = _runnable_at_priority(root)  # one scan: it reads a file per thread of the machine
    return others if scanned is None else min(others, scanned)


def _runnable_at_priority(root: Path) -> int | None:
    """Runnable threads (state R) of other processes whose nice value is at most this
    process's; None where ``root`` has no entry for this process (not a readable /proc).

    It reads one ``stat`` file per thread of the machine, with plain system calls (3,000
    threads: 33 ms, against 85 ms through `Path.glob` and `read_text`); a budget is decided
    at each task's start."""
    own = str(os.getpid())
    if not (root / own / "stat").exists():
        return None
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    count = 0
    for pid in os.listdir(root):
        if not pid.isdigit() or pid == own:
            continue
        try:
            tids = os.listdir(f"{root}/{pid}/task")
        except OSError:  # the process ended meanwhile
            continue
        for tid in tids:
            try:
                fd = os.open(f"{root}/{pid}/task/{tid}/stat", os.O_RDONLY)
                try:
                    text = os.read(fd, 4096)
                finally:
                    os.close(fd)
            except OSError:  # the thread ended meanwhile
                continue
            fields = text[text.rfind(b")") + 2 :].split()  # after "pid (comm) ": state first
            if len(fields) > 16 and fields[0] == b"R":
                count += int(fields[16]) <= mine  # field 19 of stat: nice
    return count


def free_cores(cores: int, others: int, machine: int | None = None) -> int:
    """Of `cores` this process may use, those the machine's other running threads (`others`)
    leave free: ``machine - others``, between 1 and `cores`. `machine`: the machine's cores
    (the load is counted machine-wide), default `os.cpu_count`."""
    machine = machine or os.cpu_count() or cores
    return max(1, min(cores, machine - others))


def decide_budget(
    threads: int | None = None,
    slots: int = 1,
    cores: int | None = None,
    others: int | None = None,
) -> ThreadBudget:
    """The budget of one task among `slots` sharing this process's cores.

    Args:
        threads: Explicit threads per task (the ``threads`` setting); None: ``P2P_THREADS``,
            else the auto budget, cores // slots (at least 1).
        slots: Tasks or processes computing at once on these cores.
        cores: Cores to share (default: `available_cores`, less those other busy work on the
            machine holds, `free_cores`, when this is the only slot: with several slots the
            siblings are the busy work, and the division already counts them).
        others: Threads running elsewhere (default: `busy_elsewhere`, read only when needed).
    """
    slots = max(1, slots)
    if cores is None:
        cores = available_cores()
        if slots == 1 and threads is None and setting_from_env() is None:
            cores = free_cores(cores, busy_elsewhere() if others is None else others)
    cores = max(1, cores)
    setting = threads if threads is not None else setting_from_env()
    if setting is not None:
        return ThreadBudget(cores, slots, setting, setting, explicit=True)
    share = max(1, cores // slots)
    return ThreadBudget(cores, slots, share, share, explicit=False)


def apply_budget(budget: ThreadBudget, hand_down: bool = True) -> ThreadBudget:
    """Make `budget` this process's thread counts (see the module docstring).

    Args:
        budget: The budget to apply.
        hand_down: Also write ``P2P_THREADS`` for child processes when the budget is explicit.

    Returns:
        `budget`, for chaining.
    """
    for name in _POOL_VARS:
        os.environ[name] = str(budget.torch)
    os.environ["GDAL_NUM_THREADS"] = str(budget.gdal)
    if hand_down and budget.explicit:
        os.environ[ENV] = str(budget.torch)
    torch = sys.modules.get("torch")
    if torch is not None:  # loaded already: OMP_NUM_THREADS was read; set the pool itself
        torch.set_num_threads(budget.torch)
        _set_interop_once(torch, budget.torch)
    log.debug(
        "threads: %d torch, %d GDAL per task (%s; %d cores, %d at once)",
        budget.torch,
        budget.gdal,
        "setting" if budget.explicit else "auto",
        budget.cores,
        budget.slots,
    )
    return budget


def _set_interop_once(torch: object, threads: int) -> None:
    """torch's inter-op pool can be sized once, before any inter-op work; later calls raise."""
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(max(1, threads))  # type: ignore[attr-defined]


def use_threads(threads: int | None = None) -> ThreadBudget:
    """Apply this process's budget: `threads` when set (a config's ``threads``, ``--threads``),
    else ``P2P_THREADS``, else its cores; an explicit count is handed down to children."""
    return apply_budget(decide_budget(threads))


def dask_task_budget(threads: int | None = None) -> ThreadBudget | None:
    """The budget of a task running on a Dask worker: the worker's cores divided by the task
    slots sharing them (`worker_slots`; None outside a worker)."""
    if "distributed" not in sys.modules:
        return None
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:
        return None
    return decide_budget(threads, slots=worker_slots(worker))


def worker_slots(worker: Worker) -> int:
    """Task slots sharing the cores of `worker`'s process: those of every worker running in
    this process (workers as threads share its cores), and, unless ``P2P_CORES`` gave the
    process its own share of the machine, those of every worker on its host (`host_slots`:
    worker processes started side by side, e.g. ``dask worker --nworkers 4``, each see all
    the machine's cores)."""
    here = process_slots(worker)
    return here if cores_from_env() is not None else max(here, host_slots(worker))


def process_slots(worker: Worker) -> int:
    """Task slots of `worker` and of the other workers running in this process."""
    from distributed import Worker
    from distributed.core import Status

    try:
        live = {w for w in Worker._instances if w.status in (Status.running, Status.paused)}
    except RuntimeError:  # a worker started or ended meanwhile: count this one alone
        live = set()
    return sum(int(w.state.nthreads) for w in live | {worker})


def host_slots(worker: Worker) -> int:
    """Task slots of the running workers on `worker`'s host, as its scheduler knows them
    (their addresses and threads: one small round trip, kept `HOST_SLOTS_TTL_S` per worker
    so that workers joining later count; 0 where the scheduler does not answer in
    `HOST_SLOTS_TIMEOUT_S`)."""
    now = time.monotonic()
    cached = _HOST_SLOTS.get(worker.address)
    if cached is not None and now - cached[0] < HOST_SLOTS_TTL_S:
        return cached[1]
    from distributed.utils import sync

    try:
        nthreads: dict[str, int] = sync(
            worker.loop,
            worker.scheduler.ncores_running,
            callback_timeout=HOST_SLOTS_TIMEOUT_S,
        )
    except Exception as exc:  # a budget never fails a task: count this process alone
        log.debug("threads: no worker count from the scheduler (%s)", exc)
        nthreads = {}
    host = address_host(worker.address)
    slots = sum(int(n) for address, n in nthreads.items() if address_host(address) == host)
    _HOST_SLOTS[worker.address] = (now, slots)
    return slots


def address_host(address: str) -> str:
    """The host of a Dask address (``tcp://10.0.0.5:40123`` -> ``10.0.0.5``)."""
    return urlsplit(address).hostname or address


def task_budget(threads: int | None = None) -> ThreadBudget:
    """The budget of a task in this process: on a Dask worker its share of the worker's
    cores; elsewhere the process's cores."""
    on_worker = dask_task_budget(threads)
    return on_worker if on_worker is not None else decide_budget(threads)


def loader_worker_budget() -> ThreadBudget:
    """A DataLoader worker's budget: one thread (it reads and augments chips while the
    training process computes with the budget)."""
    return ThreadBudget(available_cores(), 1, 1, 1, explicit=False)
