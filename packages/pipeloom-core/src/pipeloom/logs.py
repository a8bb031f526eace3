"""One shared Rich console, the ``pipeloom`` logger, and `setup_logging`.

Logs and progress bars go through the same console so log lines scroll above the live bars
instead of tearing them.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import IO

from rich.console import Console, ConsoleRenderable
from rich.logging import RichHandler

from pipeloom._streams import guard, note_stopped
from pipeloom._text import printable

__all__ = ["console", "logger", "setup_logging"]


class _GuardedConsole(Console):
    """A Console whose output can neither fail nor stop a run (see `pipeloom._streams`).

    It writes to the current ``sys.stdout`` (or the file it was given) through `guard`:
    text the stream cannot encode is replaced, a closed pipe or a full disk stops the output
    with one line on stderr. Rich's own answer to a broken pipe, ``SystemExit(1)`` raised in
    whichever thread printed (a task logging a line), is never reached.
    """

    @property
    def file(self) -> IO[str]:
        """The stream Rich writes to, guarded."""
        return guard(super().file)

    @file.setter
    def file(self, new_file: IO[str]) -> None:
        self._file = new_file

    def on_broken_pipe(self) -> None:
        """Stop printing instead of raising ``SystemExit`` (the guard normally gets there first)."""
        self.quiet = True


console: Console = _GuardedConsole()
"""The console every pipeloom display and log line writes to."""

logger = logging.getLogger("pipeloom")
"""The package logger; child loggers (``pipeloom.writer``, ...) propagate to it."""

_LEVELS = {0: logging.WARNING, 1: logging.INFO}
_MARK = "_pipeloom"
"""Attribute set on the handlers `setup_logging` installs, so a second call replaces them."""


def _level(verbose: int) -> int:
    return _LEVELS.get(verbose, logging.DEBUG) if verbose >= 0 else logging.WARNING


def _remove_own_handlers(target: logging.Logger) -> None:
    for handler in list(target.handlers):
        if getattr(handler, _MARK, False):
            target.removeHandler(handler)
            handler.close()


def setup_logging(verbose: int = 0, log_file: str | Path | None = None) -> logging.Logger:
    """Show every logger's lines, yours and pipeloom's, on the shared console.

    As in pipeloom 0.0.7, the handler goes on the root logger at the chosen level, so a
    script's own ``logging.getLogger(__name__).info(...)`` lines appear above the bars. The
    ``pipeloom`` logger gets the same level and propagates to it. Calling it again replaces
    the handlers it installed before rather than adding a second set (0.0.7 used
    ``logging.basicConfig``, which silently ignored a second call).

    Rich markup in messages is not interpreted: a task name or path holding ``[red]`` is
    printed as written.

    Args:
        verbose: 0 WARNING, 1 INFO, 2 or more DEBUG.
        log_file: also write plain timestamped lines here (appended).

    Returns:
        The ``pipeloom`` logger.

    Raises:
        OSError: ``log_file`` cannot be opened for appending.
    """
    level = _level(verbose)
    root = logging.getLogger()
    handlers: list[logging.Handler] = []
    if log_file is not None:
        # Opened first: a bad path raises before anything is changed.
        file_handler = _LogFileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s %(threadName)s: %(message)s")
        )
        handlers.append(file_handler)
    rich_handler = _DataHandler(
        console=console,
        show_path=verbose >= 2,
        rich_tracebacks=True,
        markup=False,
    )
    handlers.insert(0, rich_handler)
    _remove_own_handlers(root)
    _remove_own_handlers(logger)
    for handler in handlers:
        handler.setLevel(level)
        setattr(handler, _MARK, True)
        root.addHandler(handler)
    root.setLevel(level)
    logger.setLevel(level)
    logger.propagate = True
    return logger


class _DataHandler(RichHandler):
    """A RichHandler that prints a log line's text as data: no markup, no terminal controls.

    Log lines carry user text (task names, file names, error messages); an ESC sequence in
    one must not retitle the window or clear the screen.
    """

    def render_message(self, record: logging.LogRecord, message: str) -> ConsoleRenderable:
        """Show control characters as visible escapes before Rich renders the line."""
        return super().render_message(record, printable(message, newlines=True))


class _LogFileHandler(logging.FileHandler):
    """A log file that stops, with one line on stderr, when it cannot be written.

    The standard handler prints a ~20-line traceback for every record it fails to write: a
    full disk under ``--log-file`` buried the run's output in 832 lines for 40 tasks.
    """

    stopped = False

    def emit(self, record: logging.LogRecord) -> None:
        """Append ``record``, unless writing already failed once."""
        if not self.stopped:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        """Stop on an unwritable file (one line); anything else is logging's usual report."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError | ValueError):
            super().handleError(record)
            return
        self.stopped = True
        note_stopped(f"log file {self.baseFilename}", exc)

    def flush(self) -> None:
        """Flush, unless the file already failed (its buffer cannot be written)."""
        if self.stopped:
            return
        try:
            super().flush()
        except (OSError, ValueError) as exc:
            self.stopped = True
            note_stopped(f"log file {self.baseFilename}", exc)

    def close(self) -> None:
        """Close the file; what a failed file still buffers is dropped (it was said once)."""
        try:
            super().close()
        except (OSError, ValueError) as exc:  # the failure was reported when it happened
            if not self.stopped:
                note_stopped(f"log file {self.baseFilename}", exc)
