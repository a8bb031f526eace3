"""The handler registry shared by `SQLiteWriter` and `Pipeline`.

Both accept ``register(MsgType, fn)`` and ``@obj.handler(MsgType)``; one implementation keeps
their rules (no handler for pipeloom's own messages) from drifting apart.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from pipeloom.messages import PIPELOOM_MESSAGES

__all__ = ["Handler", "HandlerRegistry", "callable_name"]

M = TypeVar("M")
Handler = Callable[[sqlite3.Connection, list[Any]], None]
"""``handler(conn, msgs)``: apply a batch of messages of one type, e.g. with executemany."""
_TypedHandler = Callable[[sqlite3.Connection, list[M]], None]


class HandlerRegistry:
    """Maps user message types to batched handlers; mixed into the writer and the pipeline."""

    handlers: dict[type[Any], Handler]
    registration_error: ClassVar[type[Exception]] = ValueError
    """Raised for a handler on one of pipeloom's own message types."""

    def register(self, msg_type: type[M], handler: _TypedHandler[M]) -> None:
        """Route messages of ``msg_type`` to ``handler(conn, msgs)`` (before the run starts).

        Raises:
            ValueError: ``msg_type`` is one of pipeloom's own messages (the pipeline raises
                its `PipelineError` instead).
        """
        if msg_type in PIPELOOM_MESSAGES:
            raise self.registration_error(f"{msg_type.__name__} is handled by pipeloom itself")
        self.handlers[msg_type] = handler

    def handler(self, msg_type: type[M]) -> Callable[[_TypedHandler[M]], _TypedHandler[M]]:
        """Decorator form of `register`: ``@writer.handler(MsgUpsertUsers)``."""

        def decorate(fn: _TypedHandler[M]) -> _TypedHandler[M]:
            self.register(msg_type, fn)
            return fn

        return decorate


def callable_name(fn: object) -> str:
    """Name a user callable in an error by its qualified name, never raising."""
    try:
        name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
        return name if type(name) is str else repr(fn)
    except Exception:  # a user __getattr__/__repr__ may raise anything
        return f"<{type(fn).__name__} object>"
