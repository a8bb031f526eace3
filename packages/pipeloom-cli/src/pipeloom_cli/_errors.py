"""Turning user mistakes into one clear line and an exit code, instead of a traceback.

Every command runs inside `user_errors`; it maps pipeloom's own errors and the CLI's
`CliError` to a single ``Error: ...`` line on stderr. ``-vv`` adds the traceback, for
when the line is not enough.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import typer

from pipeloom._text import printable
from pipeloom.errors import DatabaseError, PipeloomError, WriterFailedError
from pipeloom.result import RunResult

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CliError",
    "UsageError",
    "exit_code_for",
    "user_errors",
]

log = logging.getLogger("pipeloom.cli")

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
"""A task failed, or the run stopped on an error that is not the user's input."""
EXIT_USAGE: Final = 2
"""The command line, a file it names, or the target it names is wrong (Click uses 2 too)."""
EXIT_INTERRUPTED: Final = 130
"""Ctrl-C, as shells report a process killed by SIGINT (128 + 2)."""


class CliError(Exception):
    """An error the user can fix; printed as one line, exits with ``exit_code``."""

    exit_code: int = EXIT_FAILED


class UsageError(CliError):
    """A wrong argument, path or target: exit code 2."""

    exit_code = EXIT_USAGE


def _fail(message: str, code: int, verbose: int) -> typer.Exit:
    if verbose >= 2:
        traceback.print_exc(file=sys.stderr)
    # Messages quote paths and user values: show their control characters, never obey them.
    typer.echo(f"Error: {printable(message)}", err=True)
    return typer.Exit(code)


@contextmanager
def user_errors(verbose: int = 0) -> Iterator[None]:
    """Print expected errors as one line and exit with the matching code.

    Args:
        verbose: the command's ``-v`` count; 2 or more also prints the traceback.

    Raises:
        typer.Exit: always, when an error was caught (2 usage, 1 failure, 130 Ctrl-C).
    """
    try:
        yield
    except CliError as exc:
        raise _fail(str(exc), exc.exit_code, verbose) from exc
    except WriterFailedError as exc:
        raise _fail(str(exc), EXIT_FAILED, verbose) from exc
    except DatabaseError as exc:
        raise _fail(str(exc), EXIT_USAGE, verbose) from exc
    except PipeloomError as exc:
        raise _fail(str(exc), EXIT_FAILED, verbose) from exc
    except KeyboardInterrupt as exc:
        log.debug("interrupted by Ctrl-C")
        typer.echo("Interrupted.", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from exc


def exit_code_for(result: RunResult) -> int:
    """Map a run's outcome to the exit code scripts rely on: 0 done, 1 failed, 130 Ctrl-C."""
    if result.status in ("cancelled", "interrupted"):
        return EXIT_INTERRUPTED
    return EXIT_OK if result.ok else EXIT_FAILED
