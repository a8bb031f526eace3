"""Fixtures for the observe tests: real run databases in temporary folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.observe._observe_support import make_mixed_db, make_run_db


@pytest.fixture(scope="session")
def run_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two runs written by pipeloom (read-only for tests; copy it before changing it)."""
    return make_run_db(tmp_path_factory.mktemp("observe") / "nightly.db")


@pytest.fixture(scope="session")
def mixed_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Runs 1-4 of ``etl`` with every outcome, run 5 of ``report`` (read-only for tests)."""
    return make_mixed_db(tmp_path_factory.mktemp("observe-mixed") / "etl.db")
