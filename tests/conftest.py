"""Fixtures shared by every test folder."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

try:  # pytest >= 9.2 keeps a node's id as a structured NodeId
    from _pytest.nodeid import NodeId
except ImportError:  # pragma: no cover - older pytest: xdist's own suffix takes effect
    NodeId = None  # type: ignore[assignment,misc]


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
    """Let pytest cache its assertion-rewritten test modules, and compile pipeloom once.

    Where ``PYTHONDONTWRITEBYTECODE`` is set (as on the CI machines), pytest would rewrite
    the asserts of every test module in each of the three test workers on every run, and
    each Python child process a test starts would compile the workspace's sources again.
    pytest caches rewritten modules unless ``sys.dont_write_bytecode`` is true (its
    documented switch, "Assertion introspection details"): turned off here, in this pytest
    process only (the environment, and so every child process, keeps the setting), the
    rewritten modules are written once and then read while their source is unchanged. The
    sources are compiled in the controller, before any test starts a child process.
    """
    sys.dont_write_bytecode = False
    if hasattr(config, "workerinput"):  # an xdist worker: the controller compiled them
        return
    import compileall

    root = Path(__file__).resolve().parents[1]
    for src in sorted((root / "packages").glob("*/src")):
        compileall.compile_dir(src, quiet=1)
    compileall.compile_dir(root / "tests", quiet=1)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep ``--dist loadgroup`` grouping under pytest 9.2 (pytest-xdist issue #1386).

    xdist tells its scheduler an item's ``xdist_group`` by appending ``@group`` to the node
    id on each test worker, through ``item._nodeid``. pytest 9.2 keeps the id in ``item._id``,
    so the suffix is lost and every grouped test is dealt out alone: each worker that drew
    one browser test or one Dask test started its own Chromium and server or its own cluster
    (10-13 s each, three times over). This applies the suffix the same way xdist does, and
    only where xdist's own did not take effect, so it is a no-op once xdist is fixed.
    """
    if NodeId is None or not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        names = {
            str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
            for mark in item.iter_markers("xdist_group")
        }
        if not names:
            continue
        suffix = "@" + "_".join(sorted(names))
        if not item.nodeid.endswith(suffix):
            item._id = NodeId.parse(item.nodeid + suffix)
