"""Exceptions pipeloom raises; each message names the file, the value and the fix."""

from __future__ import annotations

__all__ = [
    "DatabaseError",
    "InvalidArgumentError",
    "PipelineError",
    "PipeloomError",
    "RunFailedError",
    "SchemaOutdatedError",
    "WriterFailedError",
]


class PipeloomError(Exception):
    """Base class so callers (and the CLI) can catch pipeloom's own errors in one place."""


class InvalidArgumentError(PipeloomError, ValueError):
    """An argument no run could use (``workers=0``, ``batch_size=-1``, a NaN timeout).

    Raised before anything starts, naming the argument, the value and what it takes. It is
    a ``ValueError`` too, as these were before it existed.
    """


class DatabaseError(PipeloomError):
    """The run database cannot be opened, read or written."""


class SchemaOutdatedError(DatabaseError):
    """The file holds an older pipeloom schema; `pipeloom db upgrade PATH` brings it forward."""


class WriterFailedError(PipeloomError):
    """The writer thread stopped; no further message can be persisted."""


class RunFailedError(PipeloomError):
    """A run did not end ``done``; raised by `RunResult.raise_for_status`."""

    def __init__(self, message: str, *, result: object = None) -> None:
        """Keep the `RunResult` on the error, so a handler can inspect it."""
        super().__init__(message)
        self.result = result
        """The `RunResult` of the failed run."""


class PipelineError(PipeloomError):
    """A pipeline is used wrongly: nothing mapped, or a run to resume that does not exist."""
