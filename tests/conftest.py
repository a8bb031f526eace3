"""Fixtures shared by every test folder."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _quiet_pipeloom_logger() -> Iterator[None]:
    """Keep handlers that one test installs from leaking into the next."""
    logger = logging.getLogger("pipeloom")
    handlers = list(logger.handlers)
    level, propagate = logger.level, logger.propagate
    yield
    for handler in list(logger.handlers):
        if handler not in handlers:
            logger.removeHandler(handler)
            handler.close()
    logger.setLevel(level)
    logger.propagate = propagate
