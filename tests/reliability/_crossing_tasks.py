"""Tasks whose results, messages, exceptions or items cannot cross a process boundary.

At module level so worker processes and Dask workers import them by name. Item ``n`` picks
what task ``make`` does; every other item loads one ``MsgOk`` row and hands ``n`` on.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from typing import Any

from pipeloom import Context, Pipeline


class TwoArgError(Exception):
    """Pickles, but cannot be unpickled: its ``__init__`` takes two arguments, args has one."""

    def __init__(self, table: str, row: int) -> None:
        super().__init__(f"{table} row {row} is bad")
        self.table = table
        self.row = row


class TwoArgValue:
    """Pickles, but cannot be unpickled anywhere: it reduces to one of its two arguments.

    (distributed makes exceptions cross by value with tblib, so on Dask an exception like
    `TwoArgError` does cross; a plain class cannot be helped.)
    """

    def __init__(self, table: str, row: int) -> None:
        self.table = table
        self.row = row

    def __reduce__(self) -> tuple[Any, ...]:
        return (TwoArgValue, (self.table,))

    def __repr__(self) -> str:
        return f"TwoArgValue({self.table!r}, {self.row})"


class LockedError(Exception):
    """Cannot be pickled at all: it holds a lock."""

    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = threading.Lock()


@dataclass(frozen=True)
class MsgOk:
    n: int


@dataclass(frozen=True)
class MsgLock:
    lock: Any


def on_ok(conn: sqlite3.Connection, msgs: list[MsgOk]) -> None:
    conn.executemany("INSERT INTO ok (n) VALUES (?)", [(m.n,) for m in msgs])


def ignore(conn: sqlite3.Connection, msgs: list[Any]) -> None:
    """A handler for the message types that never arrive."""


def schema(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS ok (n INTEGER)")


BAD = {
    2: "result-unpicklable",
    3: "result-two-arg",
    4: "emit-two-arg",
    5: "emit-unpicklable",
    6: "raise-unpicklable",
    7: "raise-two-arg",
    8: "stream-two-arg",
    13: "result-two-arg-value",
    14: "emit-two-arg-value",
}
"""Item -> what goes wrong crossing back; the other items are fine."""

pipe = Pipeline(
    "crossing",
    db="unused.db",
    handlers={MsgOk: on_ok, TwoArgError: ignore, TwoArgValue: ignore, MsgLock: ignore},
    schema=schema,
)


@pipe.task
def make(ctx: Context, n: Any) -> Any:
    how = BAD.get(n) if isinstance(n, int) else None
    ctx.emit(MsgOk(n if isinstance(n, int) else -1))
    if how == "result-unpicklable":
        return threading.Lock()
    if how == "result-two-arg":
        return TwoArgError("orders", n)
    if how == "emit-two-arg":
        ctx.emit(TwoArgError("orders", n))
    if how == "result-two-arg-value":
        return TwoArgValue("orders", n)
    if how == "emit-two-arg-value":
        ctx.emit(TwoArgValue("orders", n))
    if how == "emit-unpicklable":
        ctx.emit(MsgLock(threading.Lock()))
    if how == "raise-unpicklable":
        raise LockedError
    if how == "raise-two-arg":
        raise TwoArgError("orders", n)
    return n


@pipe.task(atomic=False)
def stream(ctx: Context, n: Any) -> Any:
    """Streams its messages (not atomic): a bad one still fails the task."""
    if n == 8:
        ctx.emit(TwoArgValue("orders", n))
    return n


@pipe.task
def use(ctx: Context, n: Any) -> Any:
    return n
