"""pipeloom-cli: the ``pipeloom`` command (demo, run, status, observe, db).

A Typer application over pipeloom-core and pipeloom-observe; ``main()`` is the console
script's entry point and ``app`` is importable for tests.

0.0.7's CLI module, ``pipeloom.cli``, is this package now. It held ``run_pipeline`` and
``setup_logging`` at module level, and its tests replaced them there
(``monkeypatch.setattr("pipeloom.cli.run_pipeline", fake)``); here they are
``pipeloom_cli.run_pipeline`` and ``pipeloom_cli.setup_logging``, loaded on first use (so
``pipeloom --version`` stays quick), and the commands look them up here each time they
run, so a replacement takes effect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeloom_cli._version import __version__

if TYPE_CHECKING:
    from pipeloom.engine import run_pipeline as run_pipeline
    from pipeloom.logs import setup_logging as setup_logging

__all__ = ["__version__"]


def __getattr__(name: str) -> Any:
    """Load 0.0.7's module-level names (``run_pipeline``, ``setup_logging``) on first use."""
    if name == "run_pipeline":
        from pipeloom.engine import run_pipeline

        return run_pipeline
    if name == "setup_logging":
        from pipeloom.logs import setup_logging

        return setup_logging
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
