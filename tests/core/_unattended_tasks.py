"""Declarative tasks for the retention and alert tests, at module level so worker processes
import them."""

from __future__ import annotations

import time
from dataclasses import dataclass

from pipeloom import Context, Pipeline

pipe = Pipeline("unattended-tasks", db="unused.db")


@pipe.task(retries=2, backoff=0)
def every_third_fails(ctx: Context, n: int) -> int:
    """Fails on every attempt for multiples of 3 (so three attempts, one final failure)."""
    if n % 3 == 0:
        raise ValueError(f"bad row {n} in '/data/part-{n}.csv'")
    return n


@pipe.task
def ok(ctx: Context, n: int) -> int:
    """Always succeeds."""
    return n


@pipe.task
def logs_and_letters(ctx: Context, n: int) -> int:
    """Leaves a log row and (through a handler that refuses it) a dead letter."""
    ctx.log.warning("loaded %d", n)
    ctx.emit(Refused(n))
    return n


@dataclass(frozen=True)
class Refused:
    """A domain message whose handler always raises: it becomes a dead letter."""

    n: int


def refuse(conn: object, msgs: list[Refused]) -> None:
    """The handler for `Refused`."""
    raise ValueError("no room for it")


@pipe.task(uses="warehouse")
def warehouse_load(ctx: Context, n: int) -> int:
    """Holds the warehouse long enough for others to queue behind it."""
    time.sleep(0.25)
    return n


@pipe.task(uses="api")
def api_call(ctx: Context, n: int) -> int:
    """One call to a rate-limited API."""
    return n


@pipe.task(uses="warehouse")
def warehouse_fails(ctx: Context, n: int) -> int:
    """Holds the warehouse, then fails (fail_fast stops the run behind it)."""
    time.sleep(0.05)
    raise ValueError(f"warehouse refused load {n}")


@pipe.task
def after_load(ctx: Context, n: int) -> int:
    """Consumes a warehouse load's result (a chain stage behind a limited one)."""
    return n


@pipe.task(rate="200/s")
def own_rate_call(ctx: Context, n: int) -> int:
    """A task metered by a rate of its own (no pipe.limit needed)."""
    return n


@pipe.task(uses="warehouse")
def warehouse_quick(ctx: Context, n: int) -> int:
    """A short hold of the warehouse."""
    time.sleep(0.02)
    return n
