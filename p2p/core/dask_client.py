"""The Dask client stages run on: a LocalCluster by default, an existing scheduler by address."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from distributed import Client, LocalCluster

from p2p.core.config import DaskConfig
from p2p.core.errors import ConfigError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 20


@contextlib.contextmanager
def dask_client(config: DaskConfig, processes: bool = True) -> Iterator[Client]:
    """Yield a client for `config`, closing whatever this call started.

    Args:
        config: `address` connects to a running scheduler (its workers must see the workspace
            and input paths); otherwise a LocalCluster with `n_workers` x `threads_per_worker`.
        processes: Local workers as processes (default: isolates Python-heavy work from the
            GIL) or as threads in this process, which start in a fraction of a second and
            share memory; threads suit work that releases the GIL (GDAL decoding, compression,
            numpy copies), such as tiling. Ignored with `address`.

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
            yield client
        return
    with (
        LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=config.n_workers,
            threads_per_worker=config.threads_per_worker,
            processes=processes,
            dashboard_address=":0",  # any free port: never collide with a running cluster
        ) as cluster,
        Client(cluster) as client,  # type: ignore[no-untyped-call]
    ):
        log.info("dask: local cluster with %s", client.nthreads())
        yield client
