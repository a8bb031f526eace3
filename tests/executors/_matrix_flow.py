"""The pipeline the behaviour matrix runs every way (copied into a temporary package).

Configured by environment variables so that every way of starting it runs the same code:
MX_EXECUTOR (threads, processes, async, dask), MX_DASK (a scheduler address), MX_DB (in the
folder of this file). Once the file ``fixed`` beside it exists (made before the resume run),
the broken and the slow task succeed: a file, which worker processes and Dask workers see too
(a Dask worker that loads this file by path has no MX_DB: it finds the marker by __file__).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeloom import Context, Pipeline

user = logging.getLogger("etl")
DB = os.environ.get("MX_DB", "matrix.db")
FIXED = Path(globals().get("__file__") or DB).with_name("fixed")


@dataclass(frozen=True)
class MsgRow:
    task: str
    n: int


def on_rows(conn: sqlite3.Connection, msgs: list[MsgRow]) -> None:
    conn.executemany("INSERT INTO rows (task, n) VALUES (?, ?)", [(m.task, m.n) for m in msgs])


def schema(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS rows (task TEXT, n INTEGER)")


def executor() -> Any:
    name = os.environ.get("MX_EXECUTOR", "threads")
    if name == "dask":
        from pipeloom.executors.dask import DaskExecutor

        return DaskExecutor(address=os.environ["MX_DASK"])
    return name


pipe = Pipeline(
    "matrix",
    db=DB,
    workers=2,
    executor=executor(),
    handlers={MsgRow: on_rows},
    schema=schema,
)


@pipe.task
def load(ctx: Context, n: int) -> int:
    ctx.emit(MsgRow("load", n))
    ctx.progress(1, 2, "half")
    ctx.log.info("loaded %d", n)
    user.warning("user line %d", n)
    ctx.progress(2, 2, "all")
    return n


@pipe.task
def broken(ctx: Context, n: int) -> int:
    ctx.emit(MsgRow("broken", n))
    if not FIXED.exists():
        raise ValueError(f"row {n} is bad")
    return n


@pipe.task(timeout=0.3, retries=1, retry_on=(TimeoutError,), backoff=0)
def slow(ctx: Context, n: int) -> int:
    ctx.log.info("slow attempt %d", ctx.attempt)
    for i in range(501):
        ctx.emit(MsgRow("slow", i))
    if FIXED.exists():
        return n
    deadline = time.monotonic() + 10
    while not ctx.cancelled.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
    ctx.log.info("late line of attempt %d", ctx.attempt)  # abandoned: never stored
    user.warning("late user line of attempt %d", ctx.attempt)
    return n


@pipe.task
def parse(ctx: Context, n: int) -> int:
    return n * 10


@pipe.task
def total(ctx: Context, values: list[int]) -> int:
    return sum(values)


pipe.gather(total, pipe.map(parse, pipe.map(load, [1, 2, 3])))
pipe.map(broken, [1])
pipe.map(slow, [1])


def main() -> None:
    """Run, then fix the broken tasks and resume; exit 0 when the first run failed and the
    resume succeeded (the CLI way runs the two from the test instead)."""
    first = pipe.run(progress=False)
    FIXED.touch()
    second = pipe.run(progress=False, resume=True)
    raise SystemExit(0 if not first.ok and second.ok else 1)


if __name__ == "__main__":
    main()
