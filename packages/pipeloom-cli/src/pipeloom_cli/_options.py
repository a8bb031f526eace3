"""Options shared by several commands, declared once so their flags and help agree."""

from __future__ import annotations

import logging
import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

import pipeloom_cli
from pipeloom_cli._errors import UsageError

__all__ = [
    "DEFAULT_DB",
    "MAX_ID",
    "TABLE_TASK_LIMIT",
    "DaskAddress",
    "ExecutorName",
    "Format",
    "LogFile",
    "Number",
    "Verbose",
    "Workers",
    "choose_executor",
    "number",
    "start_logging",
]

DEFAULT_DB = Path("./pipeloom.db")
"""The run database a command reads or writes when none is given."""
TABLE_TASK_LIMIT = 50
"""Tasks ``pipeloom status`` shows by default, so a run of a million tasks stays readable."""
MAX_ID = 2**63 - 1
"""Largest run or task id: SQLite's INTEGER (one more raised OverflowError in a query)."""
MAX_WORKERS = 10_000
"""`pipeloom.engine.MAX_WORKERS`, without importing the engine to show ``--help``."""


class Format(StrEnum):
    """Output formats of ``pipeloom status``."""

    table = "table"
    json = "json"


class Number:
    """A whole or real number within a range: the parser of every numeric option.

    One place refuses what no command can use (NaN, an infinity, a number SQLite or a
    thread pool cannot hold, a negative count) as Click's one ``Error:`` line naming the
    option, the value and the range, exit code 2, before the command starts.
    """

    def __init__(self, kind: type[int] | type[float], low: float, high: float) -> None:
        """Accept ``kind`` values from ``low`` to ``high`` (both included)."""
        self.kind = kind
        self.low = low
        self.high = high
        self.__name__ = "integer" if kind is int else "number"

    def allowed(self) -> str:
        """The range, as the error line says it."""
        if self.kind is int:
            return f"use a whole number from {int(self.low)} to {int(self.high)}"
        return f"use a number from {self.low:g} to {self.high:g}"

    def __call__(self, value: Any) -> int | float:
        """Parse ``value`` and check its range.

        Raises:
            typer.BadParameter: naming the value and the range (Click adds the option).
        """
        if isinstance(value, self.kind) and not isinstance(value, bool):
            number: int | float = value
        else:
            text = str(value).strip()
            try:
                number = int(text, 10) if self.kind is int else float(text)
            except ValueError:  # also an int of more than 4,300 digits
                raise typer.BadParameter(
                    f"{_shown(text)!r} is not {self._what()}; {self.allowed()}"
                ) from None
        if not math.isfinite(number) or not self.low <= number <= self.high:
            raise typer.BadParameter(f"{_shown(repr(number))} is out of range; {self.allowed()}")
        return number

    def _what(self) -> str:
        return "a whole number" if self.kind is int else "a number"


def _shown(text: str) -> str:
    """A value as the error line quotes it: a 5,000-digit number is cut, not printed."""
    return text if len(text) <= 40 else f"{text[:20]}...{text[-8:]} ({len(text)} chars)"


def number(
    *decls: str,
    low: float,
    high: float,
    kind: type[int] | type[float] = int,
    metavar: str | None = None,
    **kwargs: Any,
) -> Any:
    """A ``typer.Option`` taking a `Number` from ``low`` to ``high``; ``kwargs`` as Typer's."""
    shown = metavar or ("INTEGER" if kind is int else "SECONDS")
    return typer.Option(*decls, parser=Number(kind, low, high), metavar=shown, **kwargs)


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
    number(
        "--workers",
        "-w",
        low=1,
        high=MAX_WORKERS,
        help="Tasks in flight at once (default: CPU count, at most one per task).",
    ),
]
ExecutorName = Annotated[
    str | None,
    typer.Option(
        "--executor",
        "-e",
        metavar="NAME",
        help="Where tasks run: threads (default), processes, async or dask.",
    ),
]
DaskAddress = Annotated[
    str | None,
    typer.Option(
        "--dask-address",
        metavar="tcp://HOST:PORT",
        help="Run on this Dask scheduler (implies --executor dask).",
    ),
]


def choose_executor(name: str | None, dask_address: str | None) -> Any:
    """Turn --executor/--dask-address into what ``executor=`` takes, or say what is wrong.

    Raises:
        UsageError: an unknown name, or --dask-address with another executor.
    """
    from pipeloom.executors import EXECUTOR_NAMES

    if dask_address is not None:
        if name not in (None, "dask"):
            raise UsageError(
                f"--dask-address {dask_address}: only the dask executor takes an address, "
                f"not --executor {name}"
            )
        from importlib import import_module

        try:
            dask = import_module("pipeloom.executors.dask")
        except ImportError as exc:
            raise UsageError(f"--dask-address: {exc}") from exc
        return dask.DaskExecutor(address=dask_address)
    if name is None:
        return None
    if name.strip().lower() not in EXECUTOR_NAMES:
        raise UsageError(f"--executor {name}: use one of {', '.join(EXECUTOR_NAMES)}")
    return name.strip().lower()


def start_logging(verbose: int, log_file: Path | None) -> logging.Logger:
    """Route pipeloom's logs to the shared console (and the log file), or explain why not.

    Raises:
        UsageError: the log file cannot be opened.
    """
    try:
        # Looked up on the package each time (0.0.7's tests replace it there); Rich loads
        # only when a command that runs calls this.
        return pipeloom_cli.setup_logging(verbose, log_file)
    except OSError as exc:
        raise UsageError(
            f"--log-file {log_file}: cannot open it ({exc.strerror}); "
            "choose a file in an existing, writable folder"
        ) from exc


def age_in_days(option: str, text: str | None) -> float | None:
    """``--since 7d`` / ``--older-than 30d`` as days (None when not given).

    Raises:
        UsageError: the age does not read as one (``pipeloom.retention.parse_age``'s words).
    """
    if text is None:
        return None
    from pipeloom.retention import parse_age  # here: `--help` and `--version` stay light

    try:
        return parse_age(text).total_seconds() / 86400
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from exc
