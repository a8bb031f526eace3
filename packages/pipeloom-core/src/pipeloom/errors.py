"""Every exception pipeloom raises, in one place; each names the file, the value and the fix.

The tree (a second base says which built-in family an error also belongs to, so code that
catches ``ValueError`` or ``TimeoutError`` in general still catches it)::

    PipeloomError                   anything pipeloom itself refuses or fails at
    ├── InvalidArgumentError        (ValueError) a setting no run could use, before it starts
    ├── TaskSourceError             (ValueError) duplicate or non-integer task ids
    ├── PipelineError               a pipeline used wrongly (nothing mapped, no run to resume)
    ├── TaskTimeoutError            (TimeoutError) an attempt ran past its ``timeout``
    ├── OutputLimitError            (RuntimeError) an atomic task held too many messages
    ├── RemoteTaskError             a task failed in another process (its traceback kept)
    ├── DaskUnavailableError        (ImportError) ``executor="dask"`` without the extra
    ├── DatabaseError               the run database cannot be opened, read or written
    │   ├── SchemaOutdatedError     an older schema: ``pipeloom db upgrade PATH``
    │   └── HistoryError            no run history this pipeloom can read
    │       ├── RunNotFoundError    (LookupError) a run id not in the file
    │       └── TaskNotFoundError   (LookupError) a task id or key not in the run
    ├── WriterFailedError           the writer thread stopped mid-run
    ├── ExecutorFailedError         the executor could not start or go on
    └── RunFailedError              ``RunResult.raise_for_status`` on a run not ``done``

    Interrupted                     (KeyboardInterrupt) a third stop signal: not an error

The modules that raise them re-export them where earlier releases defined them
(``pipeloom.history.RunNotFoundError``, ``pipeloom.pipeline.TaskTimeoutError``, ...).
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeloom._text import printable

__all__ = [
    "DaskUnavailableError",
    "DatabaseError",
    "ExecutorFailedError",
    "HistoryError",
    "Interrupted",
    "InvalidArgumentError",
    "OutputLimitError",
    "PipelineError",
    "PipeloomError",
    "RemoteTaskError",
    "RunFailedError",
    "RunNotFoundError",
    "SchemaOutdatedError",
    "TaskNotFoundError",
    "TaskSourceError",
    "TaskTimeoutError",
    "WriterFailedError",
]


class PipeloomError(Exception):
    """Base class so callers (and the CLI) can catch pipeloom's own errors in one place."""


class InvalidArgumentError(PipeloomError, ValueError):
    """An argument no run could use (``workers=0``, ``batch_size=-1``, a NaN timeout).

    Raised before anything starts, naming the argument, the value and what it takes. It is
    a ``ValueError`` too, as these were before it existed.
    """


class TaskSourceError(PipeloomError, ValueError):
    """The task source is unusable before anything runs (duplicate or non-integer ids)."""


class PipelineError(PipeloomError):
    """A pipeline is used wrongly: nothing mapped, or a run to resume that does not exist."""


class TaskTimeoutError(PipeloomError, TimeoutError):
    """A task attempt ran past its ``timeout``; its thread was abandoned, not killed.

    A `PipeloomError` like every error pipeloom raises, and a `TimeoutError` for code that
    catches timeouts in general.
    """


class OutputLimitError(PipeloomError, RuntimeError):
    """An atomic task emitted more messages than it may hold in memory before its finish.

    A `RuntimeError` too, as it was before it joined the tree.
    """


class RemoteTaskError(PipeloomError):
    """A task failed in another process; carries the text of its traceback from there."""

    def __init__(self, summary: str, remote_traceback: str | None) -> None:
        """Keep the remote summary as the message and the traceback beside it."""
        super().__init__(summary)
        self.remote_traceback = remote_traceback
        """The traceback as formatted where the task ran."""

    def __str__(self) -> str:
        """Return the summary alone; its type name is already part of it."""
        return str(self.args[0])


class DaskUnavailableError(PipeloomError, ImportError):
    """``executor="dask"`` was asked for without the ``dask`` extra installed."""


class DatabaseError(PipeloomError):
    """The run database cannot be opened, read or written."""


class SchemaOutdatedError(DatabaseError):
    """The file holds an older pipeloom schema; `pipeloom db upgrade PATH` brings it forward."""


class HistoryError(DatabaseError):
    """The file holds no run history this pipeloom can read (or not the run or task asked)."""


class RunNotFoundError(HistoryError, LookupError):
    """A run id that is not in the file; ``first`` and ``last`` are the ids that are."""

    def __init__(self, run_id: int, first: int | None, last: int | None) -> None:
        """Name the missing run and the ids there are."""
        self.run_id, self.first, self.last = run_id, first, last
        self.have = f"its runs are {first}..{last}" if first is not None else "it holds no runs"
        """The ids there are, as words for a message."""
        super().__init__(f"run {run_id} is not in this file; {self.have}")


class TaskNotFoundError(HistoryError, LookupError):
    """A task id or key that is not in a run.

    ``first`` and ``last`` are the run's task ids; ``matches`` the keys (or names) closest to
    a key that was asked for, best first.
    """

    def __init__(
        self,
        run_id: int,
        task_id: int | str,
        first: int | None,
        last: int | None,
        matches: Sequence[str] = (),
    ) -> None:
        """Name the missing task, its run, the keys closest to it and the task ids there are."""
        self.run_id, self.task_id, self.first, self.last = run_id, task_id, first, last
        self.matches = list(matches)
        ids = f"its task ids are {first}..{last}" if first is not None else "it has no tasks"
        close = ", ".join(printable(m) for m in self.matches)
        self.have = f"close matches: {close}; {ids}" if self.matches else ids
        """The closest keys and the run's task ids, as words for a message."""
        asked = task_id if isinstance(task_id, int) else repr(printable(task_id))
        super().__init__(f"task {asked} is not in run {run_id}; {self.have}")


class WriterFailedError(PipeloomError):
    """The writer thread stopped; no further message can be persisted."""


class ExecutorFailedError(PipeloomError):
    """The executor could not start or go on (a Dask scheduler unreachable or lost)."""

    def __init__(self, message: str, stop_reason: str = "executor_failed") -> None:
        """Keep what the run row records as its stop reason (it decides the exit code)."""
        super().__init__(message)
        self.stop_reason = stop_reason
        """``executor_failed`` or ``cluster_lost`` (a `pipeloom.status.StopReason`)."""


class RunFailedError(PipeloomError):
    """A run did not end ``done``; raised by `RunResult.raise_for_status`."""

    def __init__(self, message: str, *, result: object = None) -> None:
        """Keep the `RunResult` on the error, so a handler can inspect it."""
        super().__init__(message)
        self.result = result
        """The `RunResult` of the failed run."""


class Interrupted(KeyboardInterrupt):
    """A third stop signal (Ctrl-C, SIGTERM, SIGHUP) ended the run at once.

    A `KeyboardInterrupt`, so code that handles Ctrl-C handles it too; not a
    `PipeloomError`, which is for what went wrong, not for being told to stop.
    """

    def __init__(self, stop_reason: str) -> None:
        """Keep which signal stopped the run first (``sigint``, ``sigterm``, ``sighup``)."""
        super().__init__(stop_reason)
        self.stop_reason = stop_reason
        """The `pipeloom.status.StopReason` of the first signal: it decides the exit code."""
