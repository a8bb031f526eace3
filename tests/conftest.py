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


def pytest_configure(config: pytest.Config) -> None:
    """Compile pipeloom's sources once, before any test starts a Python subprocess.

    Many tests run real ``pipeloom`` and Python child processes. Where
    ``PYTHONDONTWRITEBYTECODE`` is set (as on the CI machines), each of them would compile the
    workspace's sources again; written once here, they are only read.
    """
    if hasattr(config, "workerinput"):  # an xdist worker: the controller did it
        return
    import compileall
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for src in sorted((root / "packages").glob("*/src")):
        compileall.compile_dir(src, quiet=1)
    compileall.compile_dir(root / "tests", quiet=1)
