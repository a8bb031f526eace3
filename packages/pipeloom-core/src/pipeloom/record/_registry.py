"""The handler registry shared by `SQLiteWriter` and `Pipeline`.

Both accept ``register(MsgType, fn)`` and ``@obj.handler(MsgType)``; one implementation keeps
their rules (no handler for pipeloom's own messages) from drifting apart.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Collection, Mapping
from typing import Any, ClassVar, TypeVar

from pipeloom.messages import PIPELOOM_MESSAGES

log = logging.getLogger("pipeloom.writer")

__all__ = [
    "Handler",
    "HandlerRegistry",
    "callable_name",
    "find_handler",
    "registered_type",
    "type_key",
    "unmatched_note",
]

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


def type_key(cls: type[Any]) -> tuple[str, str]:
    """A class's module and qualified name, ``__mp_main__`` read as ``__main__``.

    A class defined in a script arrives in a worker process as another class object than the
    one its handler was registered for: a spawned child imports the script as ``__mp_main__``,
    and cloudpickle (Dask) rebuilds ``__main__`` classes by value. Its name still says which
    message type it is.
    """
    module = getattr(cls, "__module__", None)
    module = "__main__" if module in (None, "__mp_main__") else str(module)
    return module, str(getattr(cls, "__qualname__", getattr(cls, "__name__", "?")))


def registered_type(cls: type[Any], types: Collection[type[Any]]) -> type[Any] | None:
    """The registered class ``cls`` stands for: itself, or the one of the same module and name.

    Only called when ``cls`` itself is not registered (the rare path), so it may iterate.
    """
    try:
        if cls in types:
            return cls
        key = type_key(cls)
        for known in types:
            if type_key(known) == key:
                return known
    except Exception as exc:  # a metaclass whose hash or name lookups raise: not ours
        log.debug("could not match message type %r: %s", cls, exc)
    return None


def find_handler(handlers: Mapping[type[Any], Handler], cls: type[Any]) -> Handler | None:
    """The handler for ``cls``, matched by identity first, then by module and name."""
    handler = handlers.get(cls)
    if handler is not None:
        return handler
    known = registered_type(cls, handlers.keys())
    return None if known is None else handlers[known]


def unmatched_note(cls: type[Any], types: Collection[type[Any]]) -> str:
    """Why ``cls`` matched no registered type when one has its name (else an empty string)."""
    name = getattr(cls, "__qualname__", "?")
    same = [t for t in types if getattr(t, "__qualname__", None) == name]
    if not same:
        return ""
    where = ", ".join(sorted(type_key(t)[0] for t in same))
    return (
        f" (a handler is registered for a {name} from module {where}, but this {name} comes "
        f"from module {type_key(cls)[0]}: emit the class the handler was registered for)"
    )
