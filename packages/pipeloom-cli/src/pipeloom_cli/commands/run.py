"""``pipeloom run TARGET``: run a pipeline defined in the user's code.

TARGET names either a declarative pipeline object (``--db``, ``--workers``, ``--resume`` and
``--wait`` go to its ``run()``) or a plain function, called with the ``--arg`` values
as keyword arguments. A function that returns the `RunResult` of `run_pipeline` gets the
same exit codes as ``pipeloom demo``.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeloom.errors import PipelineError, PipeloomError
from pipeloom.result import RunResult
from pipeloom_cli._dbfile import observe_hint, prepare_for_write
from pipeloom_cli._errors import CliError, UsageError, exit_code_for, user_errors
from pipeloom_cli._options import (
    MAX_ID,
    DaskAddress,
    ExecutorName,
    LogFile,
    Verbose,
    Workers,
    choose_executor,
    number,
    start_logging,
)
from pipeloom_cli._target import (
    Target,
    accepts,
    bind_arguments,
    is_pipeline,
    load_target,
    parse_arg_pairs,
)

__all__ = ["run"]

log = logging.getLogger("pipeloom.cli")


def _run_pipeline_object(
    target: Target,
    raw: dict[str, str],
    db: Path | None,
    workers: int | None,
    resume: bool | int,
    executor: Any,
    wait: bool,
    asked: dict[str, Any],
) -> Any:
    if raw:
        names = ", ".join(raw)
        given = " ".join(f"--param {k}={v}" for k, v in raw.items())
        raise UsageError(
            f"--arg {names}: {target.label} is a pipeline; pass its parameters with --param "
            f"({given}); it also takes --db, --workers and --resume"
        )
    # Without --db the pipeline writes to its own file; upgrade and name that one.
    own_db = getattr(target.obj, "db", None)
    effective = db if db is not None else Path(own_db) if isinstance(own_db, str | Path) else None
    if effective is not None:
        prepare_for_write(effective)
    try:
        return target.obj.run(
            db=db,
            workers=workers,
            resume=resume,
            summary_hint=observe_hint(effective),
            **asked,
            **({"wait_for_live": True} if wait else {}),
            **({"executor": executor} if executor is not None else {}),
        )
    except PipelineError as exc:
        raise UsageError(str(exc)) from exc


def _run_function(
    target: Target,
    raw: dict[str, str],
    db: Path | None,
    workers: int | None,
    resume: bool | int,
    executor: Any,
    wait: bool,
    asked: dict[str, Any],
) -> Any:
    fn = target.obj
    if asked:
        options = ", ".join(sorted(_OPTION_OF[name] for name in asked))
        raise UsageError(
            f"{options}: {target.label} is a function; these options are for pipeline objects "
            "(pass what the function needs with --arg key=value)"
        )
    extra: dict[str, Any] = {}
    for option, name, value in (
        ("--db", "db", db),
        ("--workers", "workers", workers),
        ("--resume", "resume", resume or None),
        ("--executor", "executor", executor),
        ("--wait", "wait_for_live", wait or None),
    ):
        if value is None:
            continue
        if not accepts(fn, name):
            raise UsageError(
                f"{option}: {target.label} is a function without a {name!r} parameter; "
                "pass what it needs with --arg key=value"
            )
        extra[name] = value
    kwargs = bind_arguments(fn, raw, target.label, extra)
    log.info("calling %s(%s)", target.label, ", ".join(f"{k}={v!r}" for k, v in kwargs.items()))
    try:
        if inspect.iscoroutinefunction(fn):
            import asyncio  # here: asyncio (with ssl) is ~20 ms of every CLI start otherwise

            return asyncio.run(fn(**kwargs))
        return fn(**kwargs)
    except (PipeloomError, KeyboardInterrupt, CliError):
        raise
    except Exception as exc:  # the user's code failed: one line, traceback with -vv
        raise CliError(
            f"{target.label} raised {type(exc).__name__}: {exc} (-vv shows the traceback)"
        ) from exc


_OPTION_OF = {
    "params": "--param",
    "allow_param_change": "--allow-param-change",
    "rerun": "--rerun",
    "rerun_from": "--from",
    "refresh": "--refresh",
}
"""The option that sets each `Pipeline.run` keyword, for error messages."""


class NotifyWhen(StrEnum):
    """When ``--notify`` sends a run's message."""

    failure = "failure"
    always = "always"


def _notifying(urls: list[str], when: NotifyWhen) -> contextlib.AbstractContextManager[None]:
    """Every run started in the block also calls these webhooks (`pipeloom.alerts`)."""
    if not urls:
        return contextlib.nullcontext()
    from pipeloom.alerts import Alerts, extra_alerts
    from pipeloom.errors import InvalidArgumentError
    from pipeloom.notify import webhook

    try:
        hooks = [webhook(url, on=when.value) for url in urls]
    except InvalidArgumentError as exc:
        raise UsageError(f"--notify: {exc}") from exc
    # One message per run: a webhook per failed task would flood a channel on a bad day.
    return extra_alerts(Alerts(on_run_end=tuple(hooks)))


def run(
    target: Annotated[
        str,
        typer.Argument(
            metavar="TARGET",
            help="package.module:function or path/to/file.py:function (or a pipeline object).",
            show_default=False,
        ),
    ],
    arg: Annotated[
        list[str] | None,
        typer.Option(
            "--arg",
            metavar="KEY=VALUE",
            help="Keyword argument for the function, converted by its type hint; repeatable.",
        ),
    ] = None,
    db: Annotated[
        Path | None,
        typer.Option(
            "--db",
            help="Run database (a pipeline's, or a function's `db` parameter); upgraded first.",
        ),
    ] = None,
    workers: Workers = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Resume the latest run: skip tasks already done.")
    ] = False,
    resume_run: Annotated[
        int | None,
        number("--resume-run", low=1, high=MAX_ID, metavar="ID", help="Resume run ID instead."),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="With --resume: wait for a live run of the pipeline to end instead of refusing.",
        ),
    ] = False,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            metavar="NAME=VALUE",
            help="A pipeline parameter, converted to its default's type; repeatable.",
        ),
    ] = None,
    allow_param_change: Annotated[
        bool,
        typer.Option(
            "--allow-param-change",
            help="With --resume: resume although the run was made with other parameters.",
        ),
    ] = False,
    rerun: Annotated[
        list[str] | None,
        typer.Option(
            "--rerun",
            metavar="PATTERN",
            help="Resume the latest run but run again the tasks matching a stage name, a task "
            "key or a key glob (parse, parse:AA-*), and all that consume them; repeatable.",
        ),
    ] = None,
    rerun_from: Annotated[
        str | None,
        typer.Option(
            "--from",
            metavar="STAGE",
            help="Resume the latest run but run STAGE and everything downstream again.",
            show_default=False,
        ),
    ] = None,
    refresh: Annotated[
        bool,
        typer.Option(
            "--refresh", help="Run cached tasks (cache=True) even when an earlier run has them."
        ),
    ] = False,
    executor: ExecutorName = None,
    dask_address: DaskAddress = None,
    notify: Annotated[
        list[str] | None,
        typer.Option(
            "--notify",
            metavar="URL",
            help="POST a JSON message to this webhook (Slack, Teams or any receiver) when "
            "the run ends; repeatable.",
        ),
    ] = None,
    notify_on: Annotated[
        NotifyWhen,
        typer.Option("--notify-on", help="Send the run's message on failure only, or always."),
    ] = NotifyWhen.failure,
    verbose: Verbose = 0,
    log_file: LogFile = None,
) -> None:
    """Run a pipeline function or object.

    TARGET is package.module:function or path/to/file.py:function, or names a declarative
    pipeline object.

    Exits 0 when every task is done, 1 when any failed, 2 for usage errors, 130 after Ctrl-C.
    """
    with user_errors(verbose):
        start_logging(verbose, log_file)
        raw = parse_arg_pairs(arg or [])
        asked: dict[str, Any] = {}
        if param:
            asked["params"] = parse_arg_pairs(param, option="--param")
        if allow_param_change:
            asked["allow_param_change"] = True
        if rerun:
            asked["rerun"] = list(rerun)
        if rerun_from is not None:
            asked["rerun_from"] = rerun_from
        if refresh:
            asked["refresh"] = True
        loaded = load_target(target)
        resume_value: bool | int = resume_run if resume_run is not None else resume
        if wait and resume_value is False:
            raise UsageError("--wait waits for a live run before a resume; add --resume")
        if db is not None and not is_pipeline(loaded.obj):
            prepare_for_write(db)
        runner = _run_pipeline_object if is_pipeline(loaded.obj) else _run_function
        chosen = choose_executor(executor, dask_address)
        with _notifying(notify or [], notify_on):
            outcome = runner(loaded, raw, db, workers, resume_value, chosen, wait, asked)
    if isinstance(outcome, RunResult):
        raise typer.Exit(exit_code_for(outcome))
