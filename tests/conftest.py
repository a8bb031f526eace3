"""Fixtures shared by every test folder."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _quiet_pipeloom_logger() -> Iterator[None]:
    """Keep handlers that one test installs from leaking into the next.

    ``setup_logging`` puts its handlers on the root logger (as pipeloom 0.0.7 did), so the
    root logger is restored too.
    """
    logger = logging.getLogger("pipeloom")
    root = logging.getLogger()
    handlers, root_handlers = list(logger.handlers), list(root.handlers)
    level, propagate, root_level = logger.level, logger.propagate, root.level
    yield
    for owner, before in ((logger, handlers), (root, root_handlers)):
        for handler in list(owner.handlers):
            if handler not in before:
                owner.removeHandler(handler)
                handler.close()
    logger.setLevel(level)
    logger.propagate = propagate
    root.setLevel(root_level)
