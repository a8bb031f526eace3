"""pipeloom-cli: the ``pipeloom`` command (demo, run, status, observe, db).

A Typer application over pipeloom-core and pipeloom-observe; ``main()`` is the console
script's entry point and ``app`` is importable for tests.
"""

from pipeloom_cli._version import __version__

__all__ = ["__version__"]
