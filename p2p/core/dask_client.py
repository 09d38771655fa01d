"""The Dask client stages run on: a LocalCluster by default, an existing scheduler by address."""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
from collections.abc import Iterator
from typing import Any

import dask
from distributed import Client, LocalCluster

from p2p.core.config import DaskConfig
from p2p.core.errors import ConfigError
from p2p.core.threads import CORES_ENV, address_host, available_cores

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 20

#: CPython before 3.12 can deadlock when one thread calls ``sys._current_frames`` while an
#: allocation in another runs the garbage collector (python/cpython#106883 and #116969, not
#: fixed in 3.11): Dask's worker profiler calls it every 10 ms, and a tiling run hung for good
#: with the profiler in ``sys._current_frames`` and the event loop in Dask's GC diagnosis
#: callback (dask/distributed#8616). Where the interpreter has the bug, the clusters p2p
#: starts run without the profiler, and workers it joins have theirs stopped; the profile
#: pane of the dashboard stays empty, nothing else changes.
FRAMES_DEADLOCK = sys.version_info < (3, 12)
#: Dask settings that keep every worker clear of ``sys._current_frames`` (read when a worker
#: starts; a Nanny hands them to its worker process).
SAFE_CONFIG = {"distributed.worker.profile.enabled": False}
_PROFILER_CALLBACKS = ("profile", "profile-cycle")


def safe_config() -> contextlib.AbstractContextManager[Any]:
    """Dask's config for clusters started inside the block, safe on this interpreter."""
    return dask.config.set(SAFE_CONFIG) if FRAMES_DEADLOCK else contextlib.nullcontext()


def _stop_profiler(dask_worker: Any) -> bool:
    """Stop a running worker's profiler (run on each worker with `Client.run`).

    Returns:
        Whether a profiler was running.
    """
    stopped = False
    for name in _PROFILER_CALLBACKS:
        callback = dask_worker.periodic_callbacks.pop(name, None)
        if callback is not None:
            callback.stop()
            stopped = True
    return stopped


def make_safe(client: Client) -> None:
    """Stop the profiler of every worker now attached to `client`'s scheduler, where this
    interpreter can deadlock in it (see `FRAMES_DEADLOCK`). Workers joining later keep the
    settings they were started with (start them with ``DASK_DISTRIBUTED__WORKER__PROFILE__
    ENABLED=False``)."""
    if FRAMES_DEADLOCK:
        client.run(_stop_profiler)  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def dask_client(config: DaskConfig, processes: bool = True) -> Iterator[Client]:
    """Yield a client for `config`, closing whatever this call started.

    Args:
        config: `address` connects to a running scheduler (its workers must see the workspace
            and input paths); otherwise a LocalCluster with `n_workers` x `threads_per_worker`,
            by default one worker with a thread per core this process may use
            (`local_shape`).
        processes: Local workers as processes (default: isolates Python-heavy work from the
            GIL) or as threads in this process, which start in a fraction of a second and
            share memory; threads suit work that releases the GIL (GDAL decoding, compression,
            numpy copies), such as tiling. Ignored with `address`. Worker processes are
            each told their share of the cores (``P2P_CORES``, `worker_env`); threads
            share this process's cores, and a task's budget divides them by all their
            task slots (`p2p.core.threads.worker_slots`).

    Raises:
        ConfigError: the scheduler at `address` cannot be reached.
    """
    if config.address:
        try:
            client = Client(config.address, timeout=CONNECT_TIMEOUT_S)  # type: ignore[no-untyped-call]
        except OSError as exc:
            raise ConfigError(
                "dask.address", f"cannot reach scheduler {config.address} ({exc})"
            ) from None
        with client:
            make_safe(client)
            yield client
        return
    cores = available_cores()
    n_workers, threads_per_worker = local_shape(config, cores)
    # Only worker processes get an environment: threads run in this process, whose cores a
    # process-wide cap would wrongly shrink (and a threaded Worker takes no `env`).
    env = {"env": worker_env(n_workers, cores)} if processes else {}
    with (
        safe_config(),
        LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=processes,
            dashboard_address=":0",  # any free port: never collide with a running cluster
            **env,
        ) as cluster,
        Client(cluster) as client,  # type: ignore[no-untyped-call]
    ):
        log.info("dask: local cluster with %s", client.nthreads())
        yield client


def secure_workers(address: str) -> None:
    """Stop the profilers of the workers attached to the scheduler at `address` (`make_safe`).

    Raises:
        ConfigError: the scheduler cannot be reached.
    """
    with dask_client(DaskConfig(address=address)):
        pass


def local_shape(config: DaskConfig, cores: int | None = None) -> tuple[int, int]:
    """(workers, threads per worker) of a LocalCluster for `config`: the settings, and what
    they leave open from the cores this process may use (`p2p.core.threads.available_cores`:
    its affinity and cgroup quota, not the machine's count), split evenly; neither set: one
    worker with a thread per core."""
    cores = available_cores() if cores is None else cores
    if config.n_workers is None:
        threads = config.threads_per_worker or cores
        return max(1, cores // threads), threads
    return config.n_workers, config.threads_per_worker or max(1, cores // config.n_workers)


def worker_env(n_workers: int, cores: int) -> dict[str, str]:
    """The environment of each of `n_workers` worker processes sharing `cores`: its share
    in ``P2P_CORES`` (cores // workers, at least 1), which caps what it counts as its own
    (`p2p.core.threads.available_cores`). Without it, every worker process would count all
    the cores: 2 workers x 1 task on 2 cores ran 2 x 2 torch and GDAL threads."""
    return {CORES_ENV: str(max(1, cores // max(1, n_workers)))}


def worker_hosts(address: str) -> list[str]:
    """The hosts of the workers now attached to the scheduler at `address`.

    Raises:
        ConfigError: the scheduler cannot be reached.
    """
    with dask_client(DaskConfig(address=address)) as client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
    return sorted({address_host(str(addr)) for addr in workers})


def this_machine() -> set[str]:
    """Names and addresses under which processes on this machine can appear."""
    names = {"127.0.0.1", "::1", "localhost", socket.gethostname(), socket.getfqdn()}
    with contextlib.suppress(OSError):
        names.update(socket.gethostbyname_ex(socket.gethostname())[2])
    return names


def remote_hosts(hosts: list[str], local: set[str] | None = None) -> list[str]:
    """The hosts in `hosts` that are not this machine (loopback addresses never are)."""
    mine = this_machine() if local is None else local
    return [h for h in hosts if h not in mine and not h.startswith("127.")]
