"""Options shared by several commands, declared once so their flags and help agree."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeloom_cli._errors import UsageError

__all__ = [
    "DaskAddress",
    "ExecutorName",
    "LogFile",
    "Verbose",
    "Workers",
    "choose_executor",
    "start_logging",
]

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
        "--workers",
        "-w",
        min=1,
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
    from pipeloom.logs import setup_logging  # here: Rich loads only for a command that runs

    try:
        return setup_logging(verbose, log_file)
    except OSError as exc:
        raise UsageError(
            f"--log-file {log_file}: cannot open it ({exc.strerror}); "
            "choose a file in an existing, writable folder"
        ) from exc
