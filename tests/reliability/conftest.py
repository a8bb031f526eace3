"""The executor tests' Dask cluster, for the reliability tests that cross to Dask workers."""

from tests.executors.conftest import dask_client as dask_client
