"""Shared pytest fixtures."""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """moto's standalone S3 server on a free loopback port, for the whole session."""
    from tests.s3server import run_server

    with run_server(tmp_path_factory.mktemp("s3") / "moto.log") as server:
        yield server


@pytest.fixture
def s3(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The S3 server with this test's environment pointing at it and a fresh, empty bucket
    ``s3.bucket`` (any other AWS variable of this machine removed)."""
    import uuid

    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket)
    return _Bucket(s3_server, bucket)


class _Bucket:
    """A test's bucket on the S3 server: ``url(key)`` and the server's helpers."""

    def __init__(self, server: Any, bucket: str) -> None:
        self.server, self.bucket = server, bucket

    def url(self, key: str) -> str:
        """``s3://{bucket}/{key}``."""
        return f"s3://{self.bucket}/{key}"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.server, name)
