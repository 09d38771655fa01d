"""Task runs on a Dask cluster report to the flow's Prefect server.

Prefect hands every task it submits the flow's settings, so with ``PREFECT_API_URL`` set the
workers' task runs land on that server. Without it, the flow runs against a temporary server
that this process started on 127.0.0.1, and a worker given no URL starts a temporary server of
its own (task runs and artifacts go there, and it outlives the worker). So: workers on this
machine are handed the temporary server's URL; workers elsewhere cannot reach it, and the flow
refuses to start in one line, asking for a server they can reach.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_dask.task_runners import DaskTaskRunner

from p2p.core.dask_client import remote_hosts, secure_workers, worker_hosts
from p2p.core.errors import ConfigError


def temporary_server_url() -> str | None:
    """The API URL of the temporary Prefect server this process runs, if it runs one."""
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the instance get_client() started, if any
    return server.api_url if server.running else None


@contextlib.contextmanager
def reporting_runner(address: str) -> Iterator[Any]:
    """A `DaskTaskRunner` on the scheduler at `address` whose task runs report to this flow's
    server; use it (submit the tasks) inside the block. (Typed Any: prefect-dask's runner does
    not match the annotation of `Flow.with_options`.)

    Raises:
        ConfigError: the flow runs on a temporary server and some workers are on other
            machines, or it runs on no server the workers could be given.
    """
    if PREFECT_API_URL.value():
        secure_workers(address)  # worker_hosts below does it too
        yield DaskTaskRunner(address=address)
        return
    url = temporary_server_url()
    away = remote_hosts(worker_hosts(address))
    if url is None or away:
        where = f"workers on {', '.join(away)}" if away else "the workers"
        raise ConfigError(
            "dask.address",
            f"{where} cannot reach this run's temporary Prefect server; set PREFECT_API_URL "
            "to a Prefect server that this machine and the workers reach (prefect server start)",
        )
    with temporary_settings({PREFECT_API_URL: url}):
        yield DaskTaskRunner(address=address)
