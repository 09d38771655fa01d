"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A temporary Prefect server and database for the whole session.

    It costs 8–17 s to start, so it is session-scoped and only tests that run flows ask for it.
    """
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(autouse=True)
def _restore_dask_scheduler() -> Iterator[None]:
    """Undo a global ``scheduler=dask.distributed`` that a closed client left behind.

    A distributed ``Client`` sets the global scheduler while open; clients closed out of order
    (Prefect's DaskTaskRunner closes its own in another thread) can leave it set, and a later
    test's ``.compute()`` then asks for a client that no longer exists.
    """
    import dask

    before = dask.config.get("scheduler", None)
    yield
    if dask.config.get("scheduler", None) != before:
        if before is None:
            dask.config.config.pop("scheduler", None)
        else:
            dask.config.set(scheduler=before)
