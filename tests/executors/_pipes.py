"""Declarative tasks for the executor tests, at module level so worker processes import them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from pipeloom import Context, Pipeline

pipe = Pipeline("exec", db="unused.db")


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
