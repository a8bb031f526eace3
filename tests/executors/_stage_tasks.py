"""Stage tasks for the executor tests, at module level so worker processes import them."""

from __future__ import annotations

import asyncio

from pipeloom import Context, Pipeline

pipe = Pipeline("stage-tasks", db="unused.db")


@pipe.task
def download(ctx: Context, n: int) -> str:
    return f"page-{n}"


@pipe.task
def parse(ctx: Context, page: str) -> int:
    n = int(page.removeprefix("page-"))
    if n == 3:
        raise ValueError(f"{page} is broken")
    return n * 10


@pipe.task
async def load(ctx: Context, rows: int) -> int:
    await asyncio.sleep(0)
    return rows + 1


@pipe.task
def summarise(ctx: Context, loaded: list[int]) -> int:
    return sum(loaded)
