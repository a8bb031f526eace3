"""Tasks that emit rows in bulk (``ctx.emit_many``), at module level so worker processes and
Dask workers import them. Two row types: a frozen slots dataclass and a ``NamedTuple``, the
two kinds that cross a process as plain tuples."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from pipeloom import Context, Pipeline


@dataclass(frozen=True, slots=True)
class Row:
    file: str
    n: int
    amount: int
    note: str | None = None


class Pair(NamedTuple):
    file: str
    n: int


def schema(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS rows (file TEXT NOT NULL, n INTEGER NOT NULL, "
        "amount INTEGER NOT NULL CHECK (amount >= 0), note TEXT, PRIMARY KEY (file, n))"
    )
    conn.execute("CREATE TABLE IF NOT EXISTS pairs (file TEXT NOT NULL, n INTEGER NOT NULL)")


batch_sizes: list[int] = []
"""Sizes of the batches the row handler got (in the driver, where it runs)."""


def save_rows(conn: sqlite3.Connection, msgs: list[Row]) -> None:
    batch_sizes.append(len(msgs))
    conn.executemany(
        "INSERT INTO rows VALUES (?, ?, ?, ?)", [(m.file, m.n, m.amount, m.note) for m in msgs]
    )


def save_pairs(conn: sqlite3.Connection, msgs: list[Pair]) -> None:
    assert all(type(m) is Pair for m in msgs), {type(m) for m in msgs}
    conn.executemany("INSERT INTO pairs VALUES (?, ?)", msgs)  # a NamedTuple is a tuple


class Tick(NamedTuple):
    task: int
    n: int
    pad: str = ""


in_flight: list[int] = []
"""Per call of `save_ticks`: rows emitted by finished tasks and not yet applied."""
_applied = [0]
produced_file: list[str] = []
"""Where the `burst` tasks note their rows (set by the test, read in the driver)."""


def save_ticks(conn: sqlite3.Connection, msgs: list[Tick]) -> None:
    """A slow handler (the writer falls behind); notes how many rows wait for it."""
    if produced_file:
        made = sum(int(line) for line in Path(produced_file[0]).read_text().split())
        in_flight.append(made - _applied[0])
    _applied[0] += len(msgs)
    time.sleep(0.02)


def make_pipe(db: object, executor: object, **kwargs: object) -> Pipeline:
    pipe = Pipeline(
        "bulk",
        db=db,  # type: ignore[arg-type]
        schema=schema,
        handlers={Row: save_rows, Pair: save_pairs, Tick: save_ticks},
        executor=executor,  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )
    return pipe


pipe = Pipeline("bulk-tasks", db="unused.db")


@pipe.task
def load(ctx: Context, spec: tuple[str, int, int]) -> int:
    """``spec`` = (file, rows, where): ``where`` >= 0 makes that row break the CHECK;
    -2 raises after emitting everything (a failed attempt)."""
    file, n, where = spec
    rows = [Row(file, i, -1 if i == where else i, None if i % 3 else f"r{i}") for i in range(n)]
    ctx.emit_many(rows)
    ctx.emit_many(Pair(file, i) for i in range(n))
    if where == -2:
        raise ConnectionError(f"{file}: the source went away after {n} rows")
    return n


@pipe.task(max_outputs=50)
def too_many(ctx: Context, spec: tuple[str, int, int]) -> int:
    file, n, _ = spec
    ctx.emit_many([Row(file, i, i) for i in range(n)])
    return n


@pipe.task(atomic=False)
def stream(ctx: Context, spec: tuple[str, int, int]) -> int:
    file, n, _ = spec
    for start in range(0, n, 1_000):
        ctx.emit_many([Row(file, i, i) for i in range(start, min(n, start + 1_000))])
    return n


@pipe.task
async def load_async(ctx: Context, spec: tuple[str, int, int]) -> int:
    return load.fn(ctx, spec)


@pipe.task(atomic=False)
async def stream_async(ctx: Context, spec: tuple[str, int, int]) -> int:
    return stream.fn(ctx, spec)


@pipe.task
def burst(ctx: Context, spec: tuple[int, int, str, int]) -> int:
    """Emit ``n`` ticks at once (held: they travel in the finish), then note it in the file.

    ``spec`` = (task, n, the file, pad): each tick carries ``pad`` characters of its own, so
    that a finished task's rows fill an OS pipe's buffer on their way from a worker process.
    """
    task, n, produced, pad = spec
    ctx.emit_many([Tick(task, i, f"{task}.{i}:".ljust(pad, "x")) for i in range(n)])
    with open(produced, "a", encoding="utf-8") as fh:
        fh.write(f"{n}\n")
    return n


@pipe.task
async def burst_async(ctx: Context, spec: tuple[int, int, str, int]) -> int:
    return burst.fn(ctx, spec)
