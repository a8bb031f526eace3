"""One shared Rich console and the ``pipeloom`` logger.

Logs and progress bars go through the same console so log lines scroll above the live bars
instead of tearing them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler

__all__ = ["console", "logger", "setup_logging"]

console = Console()
"""The console every pipeloom display and log line writes to."""

logger = logging.getLogger("pipeloom")
"""The package logger; child loggers (``pipeloom.writer``, ...) propagate to it."""

_LEVELS = {0: logging.WARNING, 1: logging.INFO}


def setup_logging(verbose: int = 0, log_file: str | Path | None = None) -> logging.Logger:
    """Route pipeloom's logs to the shared console (and optionally a plain file).

    Args:
        verbose: 0 WARNING, 1 INFO, 2 or more DEBUG.
        log_file: also write plain timestamped lines here (appended).

    Returns:
        The configured ``pipeloom`` logger.
    """
    level = _LEVELS.get(verbose, logging.DEBUG) if verbose >= 0 else logging.WARNING
    for handler in list(logger.handlers):
        if getattr(handler, "_pipeloom", False):
            logger.removeHandler(handler)
            handler.close()
    rich_handler = RichHandler(console=console, show_path=verbose >= 2, rich_tracebacks=True)
    rich_handler.setLevel(level)
    rich_handler._pipeloom = True  # type: ignore[attr-defined]
    logger.addHandler(rich_handler)
    if log_file is not None:
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s %(threadName)s: %(message)s")
        )
        file_handler.setLevel(level)
        file_handler._pipeloom = True  # type: ignore[attr-defined]
        logger.addHandler(file_handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger
