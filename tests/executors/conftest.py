"""One Dask cluster for every executor test that needs one (they share an xdist group)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from distributed import Client

ROOT = str(Path(__file__).resolve().parents[2])


@pytest.fixture(scope="package")
def dask_client() -> Iterator[Client]:
    """A real 2-process LocalCluster; worker processes import the test modules from ROOT.

    Package scope, not session: the "dask" xdist group runs all its tests back to back on
    one test worker, so the cluster is closed when that worker moves on to another folder
    instead of idling to the end of the session (an idle 2-worker cluster costs about
    0.1 CPU-second a second on this 2-core machine).
    """
    # Imported here: distributed takes a second to import, and only the one test worker that
    # runs the Dask tests should pay for it.
    from distributed import Client, LocalCluster

    added = ROOT not in sys.path
    if added:
        sys.path.insert(0, ROOT)
    try:
        with (
            LocalCluster(  # type: ignore[no-untyped-call]
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
            ) as cluster,
            Client(cluster) as client,  # type: ignore[no-untyped-call]
        ):
            yield client
    finally:
        if added:
            sys.path.remove(ROOT)


@pytest.fixture
def make_executor(request: pytest.FixtureRequest) -> Any:
    """Turn an executor name into what ``executor=`` takes (Dask: the shared cluster)."""

    def make(name: str) -> Any:
        if name != "dask":
            return name
        from pipeloom.executors.dask import DaskExecutor

        return DaskExecutor(client=request.getfixturevalue("dask_client"))

    return make


EXECUTORS = [
    "threads",
    "processes",
    "async",
    pytest.param("dask", marks=pytest.mark.xdist_group("dask")),
]
"""Every executor, for the conformance set (Dask's cases run on the one worker with the
cluster)."""
