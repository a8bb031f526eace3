"""Declarative tasks for the executor tests, at module level so worker processes import them."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from pathlib import Path

from pipeloom import Context, Pipeline

pipe = Pipeline("exec", db="unused.db")
logging.getLogger("user.etl").setLevel(logging.WARNING)  # the same in every worker process


@pipe.task(retries=1, backoff=0)
def square(ctx: Context, n: int) -> int:
    ctx.progress(1, 1)
    if n == 3 and ctx.attempt == 1:
        raise ConnectionError("flaky on the first try")
    if n == 5 and Path(str(ctx.key)).name == "never":
        raise AssertionError("unreachable")
    return n * n


@pipe.task(retries=1, backoff=0)
async def square_async(ctx: Context, n: int) -> int:
    await asyncio.sleep(0)
    if n == 3 and ctx.attempt == 1:
        raise ConnectionError("flaky on the first try")
    return n * n


@pipe.task(timeout=0.5)
def spin(ctx: Context, n: int) -> int:
    """Holds the GIL far past its timeout unless its process is killed."""
    if n == 2:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pass
    return n


@pipe.task(timeout=0.5)
def hog(ctx: Context, n: int) -> int:
    """Task 2 holds the GIL in C (its process cannot even answer the driver) until killed."""
    if n == 2:
        sum(itertools.repeat(1, 10**12))
    return n


@pipe.task(timeout=0.5, retries=1, backoff=0)
def spin_first_try(ctx: Context, n: int) -> int:
    """Spins on the first attempt only: the retry in a fresh process succeeds."""
    if ctx.attempt == 1:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pass
    return n + ctx.attempt


@pipe.task(timeout=0.2)
async def sleepy_async(ctx: Context, n: int) -> int:
    await asyncio.sleep(30 if n == 2 else 0)
    return n


@pipe.task(retries=1, backoff=0)
def chatty(ctx: Context, n: int) -> int:
    """Logs through ctx.log and through the user's own logger; task 3 fails once, 4 floods."""
    ctx.log.info("loading item %s", n)
    logging.getLogger("user.etl").warning("user line %d", n)
    logging.getLogger("user.etl").debug("never stored: the logger is at WARNING")
    if n == 3 and ctx.attempt == 1:
        try:
            raise ConnectionError("flaky on the first try")
        except ConnectionError:
            ctx.log.exception("attempt %d failed", ctx.attempt)
            raise
    if n == 4:
        for i in range(30):
            ctx.log.info("row %d", i)
    return n


@pipe.task(retries=1, backoff=0)
async def chatty_async(ctx: Context, n: int) -> int:
    await asyncio.sleep(0)
    return chatty.fn(ctx, n)
