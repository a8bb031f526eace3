"""The handler registry shared by `SQLiteWriter` and `Pipeline`.

Both accept ``register(MsgType, fn)`` and ``@obj.handler(MsgType)``; one implementation keeps
their rules (no handler for pipeloom's own messages) from drifting apart.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import operator
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
TupleHandler = Callable[[sqlite3.Connection, list[tuple[Any, ...]]], None]
"""``handler(conn, rows)`` registered with ``as_tuples=True``: each row its fields' tuple."""
_F = TypeVar("_F", bound=Callable[..., None])


class HandlerRegistry:
    """Maps user message types to batched handlers; mixed into the writer and the pipeline."""

    handlers: dict[type[Any], Handler]
    registration_error: ClassVar[type[Exception]] = ValueError
    """Raised for a handler on one of pipeloom's own message types."""

    def register(
        self,
        msg_type: type[M],
        handler: _TypedHandler[M] | TupleHandler,
        *,
        as_tuples: bool = False,
    ) -> None:
        """Route messages of ``msg_type`` to ``handler(conn, msgs)`` (before the run starts).

        With ``as_tuples=True`` the handler gets each message as the tuple of its fields in
        declaration order (a dataclass or ``NamedTuple``), ready for ``executemany``: the
        writer makes them in C instead of the handler's list comprehension in Python.

        Raises:
            ValueError: ``msg_type`` is one of pipeloom's own messages (the pipeline raises
                its `PipelineError` instead), or ``as_tuples`` with a type whose fields have
                no declared order.
        """
        if msg_type in PIPELOOM_MESSAGES:
            raise self.registration_error(f"{msg_type.__name__} is handled by pipeloom itself")
        if as_tuples:
            handler = self._as_tuples(msg_type, handler)
        self.handlers[msg_type] = handler

    def handler(self, msg_type: type[M], *, as_tuples: bool = False) -> Callable[[_F], _F]:
        """Decorator form of `register`: ``@writer.handler(MsgUpsertUsers)``."""

        def decorate(fn: _F) -> _F:
            self.register(msg_type, fn, as_tuples=as_tuples)
            return fn

        return decorate

    def _as_tuples(self, msg_type: type[Any], handler: Callable[..., None]) -> Handler:
        """Wrap ``handler`` so that it gets field tuples; every caller of it stays the same."""
        if issubclass(msg_type, tuple) and hasattr(msg_type, "_fields"):
            return handler  # a NamedTuple is a tuple of its fields already
        if not dataclasses.is_dataclass(msg_type):
            raise self.registration_error(
                f"register({msg_type.__name__}, {callable_name(handler)}, as_tuples=True): "
                f"{msg_type.__name__} is neither a dataclass nor a NamedTuple, so its fields "
                "have no declared order; make it one, or drop as_tuples"
            )
        names = [f.name for f in dataclasses.fields(msg_type)]
        fields = operator.attrgetter(*names) if len(names) > 1 else _single(names[0])

        @functools.wraps(handler)
        def with_tuples(conn: sqlite3.Connection, msgs: list[Any]) -> None:
            handler(conn, list(map(fields, msgs)))

        return with_tuples


def _single(name: str) -> Callable[[Any], tuple[Any, ...]]:
    get = operator.attrgetter(name)
    return lambda msg: (get(msg),)


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
