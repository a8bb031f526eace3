"""Options shared by several commands, declared once so their flags and help agree."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from pipeloom.logs import setup_logging
from pipeloom_cli._errors import UsageError

__all__ = ["LogFile", "Verbose", "Workers", "start_logging"]

Verbose = Annotated[
    int,
    typer.Option(
        "--verbose",
        "-v",
        count=True,
        help="-v shows INFO logs, -vv DEBUG logs and tracebacks of errors.",
    ),
]
LogFile = Annotated[
    Path | None,
    typer.Option(
        "--log-file",
        "-l",
        help="Also append plain, timestamped log lines to this file.",
    ),
]
Workers = Annotated[
    int | None,
    typer.Option(
        "--workers", "-w", min=1, help="Worker threads (default: CPU count, at most one per task)."
    ),
]


def start_logging(verbose: int, log_file: Path | None) -> logging.Logger:
    """Route pipeloom's logs to the shared console (and the log file), or explain why not.

    Raises:
        UsageError: the log file cannot be opened.
    """
    try:
        return setup_logging(verbose, log_file)
    except OSError as exc:
        raise UsageError(
            f"--log-file {log_file}: cannot open it ({exc.strerror}); "
            "choose a file in an existing, writable folder"
        ) from exc
