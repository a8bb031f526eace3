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
from pipeloom.errors import DatabaseError, ExecutorFailedError, PipeloomError, WriterFailedError
from pipeloom.result import RunResult
from pipeloom.status import EXIT_CODES, exit_code

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

EXIT_OK: Final = EXIT_CODES["done"]
EXIT_FAILED: Final = EXIT_CODES["failed"]
"""A task failed, or the run stopped on an error that is not the user's input."""
EXIT_USAGE: Final = EXIT_CODES["usage"]
"""The command line, a file it names, or the target it names is wrong (Click uses 2 too)."""
EXIT_INTERRUPTED: Final = EXIT_CODES["sigint"]
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
        typer.Exit: always, when an error was caught (2 usage, 1 failure, 3 writer or
            executor lost, 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP).
    """
    try:
        yield
    except CliError as exc:
        raise _fail(str(exc), exc.exit_code, verbose) from exc
    except WriterFailedError as exc:  # the run could not go on: 3, as its run row says
        raise _fail(str(exc), EXIT_CODES["lost"], verbose) from exc
    except ExecutorFailedError as exc:
        raise _fail(str(exc), exit_code("error", exc.stop_reason), verbose) from exc
    except DatabaseError as exc:
        raise _fail(str(exc), EXIT_USAGE, verbose) from exc
    except PipeloomError as exc:
        raise _fail(str(exc), EXIT_FAILED, verbose) from exc
    except KeyboardInterrupt as exc:
        # Ctrl-C, or a third stop signal (`pipeloom.errors.Interrupted` names the first).
        reason = getattr(exc, "stop_reason", None) or "sigint"
        log.debug("interrupted (%s)", reason)
        typer.echo("Interrupted.", err=True)
        raise typer.Exit(exit_code("interrupted", reason)) from exc


def exit_code_for(result: RunResult) -> int:
    """The exit code of a run's outcome: `RunResult.exit_code`, the one rule (docs/cli.md).

    A signal decides it whatever else happened (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP, even
    after failed tasks); then a lost executor, cluster or writer (3); then 0 done, else 1.
    """
    return result.exit_code
