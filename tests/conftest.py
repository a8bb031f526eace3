"""Fixtures shared by every test folder."""

from __future__ import annotations

import logging
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
    """Compile pipeloom's sources once, before any test starts a Python subprocess.

    Many tests run real ``pipeloom`` and Python child processes. Where
    ``PYTHONDONTWRITEBYTECODE`` is set (as on the CI machines), each of them would compile the
    workspace's sources again; written once here, they are only read.
    """
    if hasattr(config, "workerinput"):  # an xdist worker: the controller did it
        return
    import compileall

    root = Path(__file__).resolve().parents[1]
    for src in sorted((root / "packages").glob("*/src")):
        compileall.compile_dir(src, quiet=1)
    compileall.compile_dir(root / "tests", quiet=1)
    _rewrite_test_modules_once(config, root / "tests")


def _rewrite_test_modules_once(config: pytest.Config, tests: Path) -> None:
    """Write pytest's assertion-rewritten modules once, for every test worker to read.

    pytest rewrites the asserts of each test module, conftest and pytest plugin module as it
    imports them, and caches the result beside the ``.pyc`` files, unless
    ``PYTHONDONTWRITEBYTECODE`` is set (as on the CI machines): then each of the three test
    workers rewrote all of them again (collecting took 4.9 CPU-seconds a process instead of
    2.9). This does what pytest's import hook does when it may write (same functions, same
    config), in the controller before the workers start, for the test modules and the plugin
    modules the controller imported. pytest checks each cached file against its source, so a
    stale one is rewritten as usual; a folder that cannot be written is skipped.
    """
    try:
        from _pytest.assertion import rewrite

        state = config.stash[rewrite.assertstate_key]
        # The plugins this process already imported through the hook, then the test modules.
        sources = set() if state.hook is None else set(state.hook._rewritten_names.values())
    except (ImportError, AttributeError, KeyError) as exc:  # --assert=plain, or pytest moved
        logging.getLogger(__name__).info("not caching rewritten modules: %r", exc)
        return
    sources.update(
        fn
        for fn in tests.rglob("*.py")
        if fn.name.startswith("test_") or fn.name == "conftest.py"  # default python_files
    )
    for fn in sorted(sources):
        cache_dir = rewrite.get_cache_dir(fn)
        pyc = cache_dir / (fn.name[:-3] + rewrite.PYC_TAIL)
        if rewrite._read_pyc(fn, pyc) is not None or not rewrite.try_makedirs(cache_dir):
            continue
        source_hash, code = rewrite._rewrite_test(fn, config)
        rewrite._write_pyc(state, code, source_hash, pyc)


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
