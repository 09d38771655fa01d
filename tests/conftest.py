"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """A small threaded Dask LocalCluster for tests that do not test distribution itself."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A temporary Prefect server and database for the whole session.

    It costs 8–17 s to start, so it is session-scoped and only tests that run flows ask for it.
    """
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="session")
def demo_run(prefect_harness: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One quick demo run (training pipeline, batch prediction, report) for the session."""
    from flows.demo import demo_flow

    return demo_flow(str(tmp_path_factory.mktemp("ws")), scene_size=96, quick=True)


@pytest.fixture(autouse=True)
def _no_stale_distributed_scheduler() -> Iterator[None]:
    """Drop a global ``scheduler=dask.distributed`` whose client is gone, before each test.

    A distributed ``Client`` sets the global scheduler while open; one closed out of order
    (Prefect's DaskTaskRunner closes its own in another thread, possibly after the test that
    used it ended) can leave it set, and a later ``.compute()`` then asks for a client that no
    longer exists.
    """
    import dask
    from distributed import Client

    if dask.config.get("scheduler", None) in ("dask.distributed", "distributed"):
        try:
            Client.current(allow_global=True)
        except ValueError:
            dask.config.config.pop("scheduler", None)
    yield


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked `gpu` where no CUDA device is present."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
