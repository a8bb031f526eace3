"""Stages: tasks that consume other tasks' results, per item (a chain) or all at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeloom import Context, Pipeline, PipelineError
from pipeloom.status import FAILED, TERMINAL, count_failed, decide_run_status
from tests._harness import query


def etl(db: Path, broken: set[int], ran: list[str]) -> Pipeline:
    """download -> parse -> load per page, then one summary of every load."""
    pipe = Pipeline("etl", db=db, workers=3)
    lock = threading.Lock()

    def note(what: str) -> None:
        with lock:
            ran.append(what)

    @pipe.task
    def download(ctx: Context, page: int) -> str:
        note(f"download:{page}")
        return f"raw-{page}"

    @pipe.task
    def parse(ctx: Context, raw: str) -> list[int]:
        note(f"parse:{raw}")
        page = int(raw.removeprefix("raw-"))
        if page in broken:
            raise ValueError(f"page {page} is malformed")
        return [page, page * 10]

    @pipe.task
    def load(ctx: Context, parsed: list[int]) -> int:
        note(f"load:{parsed[0]}")
        return sum(parsed)

    @pipe.task
    def summarise(ctx: Context, loaded: list[int]) -> dict[str, int]:
        note("summarise")
        return {"pages": len(loaded), "total": sum(loaded)}

    pages = pipe.map(download, range(1, 6))
    parsed = pipe.map(parse, pages)
    loaded = pipe.map(load, parsed)
    pipe.gather(summarise, loaded)
    return pipe


def test_a_failed_item_blocks_only_its_own_downstream(tmp_path: Path) -> None:
    db = tmp_path / "etl.db"
    ran: list[str] = []
    result = etl(db, {3}, ran).run(progress=False)

    assert result.status == "error" and not result.ok
    assert result.counts == {"done": 13, "error": 1, "upstream_failed": 2}
    # upstream_failed is not a failure of its own: only parse:3 is a failed task.
    assert count_failed(result.counts) == 1
    (parse3,) = query(db, "SELECT task_id FROM task_runs WHERE task_key = 'parse:3'")[0]
    (load3,) = query(db, "SELECT task_id FROM task_runs WHERE task_key = 'load:3'")[0]
    assert result.failed_task_ids == [parse3]
    assert query(
        db,
        "SELECT task_key, status, message FROM task_runs "
        "WHERE status = 'upstream_failed' ORDER BY task_key",
    ) == [
        ("load:3", "upstream_failed", f"upstream_failed: parse:3 (task {parse3}) did not succeed"),
        (
            "summarise:all load",
            "upstream_failed",
            f"upstream_failed: 1 task(s) of load did not succeed (the first: task {load3})",
        ),
    ]
    assert "load:3" not in ran and "summarise" not in ran
    # Dependencies are recorded on each row: its stage, and whose result it consumed.
    (download2, parse2, load2) = (
        query(db, "SELECT task_id FROM task_runs WHERE task_key = ?", k)[0][0]
        for k in ("download:2", "parse:2", "load:2")
    )
    sql = (
        "SELECT task_key, stage, upstream_stage, upstream_task_id FROM task_runs "
        "WHERE task_key IN ('download:2', 'parse:2', 'load:2', 'load:3', 'summarise:all load') "
        "ORDER BY task_id"
    )
    recorded = {key: rest for key, *rest in query(db, sql)}
    assert recorded == {
        "download:2": ["download", None, None],
        "parse:2": ["parse", "download", download2],
        "load:2": ["load", "parse", parse2],
        "load:3": ["load", "parse", parse3],
        "summarise:all load": ["summarise", "load", load3],  # blocked: the first failed load
    }
    assert load2 not in (parse3, load3)
    assert query(
        db, "SELECT stage, count(*) FROM task_runs GROUP BY stage ORDER BY min(task_id)"
    ) == [("download", 5), ("parse", 5), ("load", 5), ("summarise", 1)]
    # Each item's chain carries its own item's result along.
    sql = "SELECT task_key, result FROM task_runs WHERE task_key LIKE 'load:%' ORDER BY task_key"
    assert query(db, sql) == [
        ("load:1", "11"),
        ("load:2", "22"),
        ("load:3", None),
        ("load:4", "44"),
        ("load:5", "55"),
    ]


def test_resume_reruns_only_what_is_not_done_and_reads_results_back(tmp_path: Path) -> None:
    db = tmp_path / "etl.db"
    broken = {3}
    ran: list[str] = []
    pipe = etl(db, broken, ran)
    first = pipe.run(progress=False)
    assert first.counts["upstream_failed"] == 2

    broken.clear()
    ran.clear()
    second = pipe.run(progress=False, resume=True)

    assert second.ok
    assert second.counts == {"done": 3, "skipped": 13}
    assert sorted(ran) == ["load:3", "parse:raw-3", "summarise"]
    # The summary got load 1, 2, 4, 5 from run 1's rows (JSON) and load 3 from memory.
    assert query(
        db, "SELECT result FROM task_runs WHERE run_id = ? AND task_key LIKE 'summarise:%'", 2
    ) == [('{"pages": 5, "total": 165}',)]


def test_a_result_stored_as_repr_is_made_again_on_resume(tmp_path: Path) -> None:
    db = tmp_path / "repr.db"
    broken = {2}
    pipe = Pipeline("sets", db=db, workers=2)
    ran: list[str] = []

    @pipe.task
    def collect(ctx: Context, n: int) -> set[int]:
        ran.append(f"collect:{n}")
        return {n}  # not JSON: stored as its repr, "{2}"

    @pipe.task
    def use(ctx: Context, found: set[int]) -> int:
        (n,) = found
        if n in broken:
            raise OSError("target not ready")
        return n

    pipe.map(use, pipe.map(collect, [1, 2]))
    assert pipe.run(progress=False).counts == {"done": 3, "error": 1}
    broken.clear()
    ran.clear()
    second = pipe.run(progress=False, resume=True)
    # A set cannot be read back from its stored repr ("{1}"), so every collect runs again
    # and so does what it feeds (a fresh upstream result is never paired with an old
    # downstream one). A JSON-able result (or a path) is read back and not recomputed.
    assert second.ok and second.counts == {"done": 4}
    assert sorted(ran) == ["collect:1", "collect:2"]


def test_a_downstream_task_starts_before_the_last_upstream_one_finishes(
    tmp_path: Path,
) -> None:
    pipe = Pipeline("stream", db=tmp_path / "s.db", workers=2)
    first_load = threading.Event()

    @pipe.task
    def download(ctx: Context, n: int) -> bool:
        if n == 10:  # the last download waits (bounded) for the first load to start
            return first_load.wait(timeout=10)
        return True

    @pipe.task
    def load(ctx: Context, ok: bool) -> bool:
        first_load.set()
        return ok

    pipe.map(load, pipe.map(download, range(1, 11)))
    result = pipe.run(progress=False)
    assert result.ok
    # download:10 saw a load start while it was still running: no stage barrier.
    assert query(tmp_path / "s.db", "SELECT result FROM task_runs WHERE task_key = 'load:10'") == [
        ("true",)
    ]


def test_a_long_chain_pulls_new_items_only_as_chains_finish(tmp_path: Path) -> None:
    """Depth first: finished parses feed loads before more items are read."""
    workers = 2
    pulled = 0
    loaded = 0
    ahead: list[int] = []
    lock = threading.Lock()

    def items() -> Iterator[int]:
        nonlocal pulled
        for n in range(200):
            with lock:
                pulled += 1
                ahead.append(pulled - loaded)
            yield n

    pipe = Pipeline("deep", db=tmp_path / "d.db", workers=workers)

    @pipe.task
    def a(ctx: Context, n: int) -> int:
        return n

    @pipe.task
    def b(ctx: Context, n: int) -> int:
        return n

    @pipe.task
    def c(ctx: Context, n: int) -> int:
        nonlocal loaded
        with lock:
            loaded += 1
        return n

    pipe.map(c, pipe.map(b, pipe.map(a, items())))
    assert pipe.run(progress=False).counts == {"done": 600}
    # Items read but not through the whole chain stay a few per worker, never the 200.
    assert max(ahead) <= 3 * workers + 1


def test_a_stage_can_consume_a_task_by_name_in_any_order(tmp_path: Path) -> None:
    pipe = Pipeline("forward", db=tmp_path / "f.db", workers=2)

    @pipe.task
    def double(ctx: Context, n: int) -> int:
        return 2 * n

    @pipe.task
    def total(ctx: Context, values: list[int]) -> int:
        return sum(values)

    pipe.gather(total, double)  # declared before double is mapped: resolved at run()
    pipe.map(double, [1, 2, 3])
    pipe.map(double, [10])  # a task mapped twice: the fan-in waits for both stages
    result = pipe.run(progress=False)
    assert result.counts == {"done": 5}
    assert query(
        tmp_path / "f.db", "SELECT result FROM task_runs WHERE task_key LIKE 'total:%'"
    ) == [("32",)]


def test_a_cycle_is_refused_before_anything_runs(tmp_path: Path) -> None:
    db = tmp_path / "cycle.db"
    pipe = Pipeline("cycle", db=db)

    @pipe.task
    def a(ctx: Context, n: int) -> int:
        return n

    @pipe.task
    def b(ctx: Context, n: int) -> int:
        return n

    @pipe.task
    def seed(ctx: Context, n: int) -> int:
        return n

    pipe.map(seed, [1])
    pipe.map(a, b)
    pipe.map(b, a)
    with pytest.raises(PipelineError, match=r"cycle \((a -> b -> a|b -> a -> b)\)"):
        pipe.run(progress=False)
    assert not db.exists()


def test_an_unknown_upstream_is_refused_before_anything_runs(tmp_path: Path) -> None:
    db = tmp_path / "unknown.db"
    pipe = Pipeline("unknown", db=db)
    other = Pipeline("other", db=db)

    @pipe.task
    def parse(ctx: Context, n: int) -> int:
        return n

    @pipe.task
    def load(ctx: Context, n: int) -> int:
        return n

    pipe.map(load, parse)  # parse is never mapped
    with pytest.raises(PipelineError, match=r"load consumes parse, which is never mapped"):
        pipe.run(progress=False)
    assert not db.exists()

    stage = other.map(other.task(lambda ctx, n: n, name="elsewhere"), [1])
    with pytest.raises(PipelineError, match="belongs to another pipeline"):
        pipe.map(load, stage)
    with pytest.raises(PipelineError, match="keys from its upstream"):
        pipe.map(load, parse, key=str)
    with pytest.raises(PipelineError, match="pass the task"):
        pipe.gather(load, [1, 2])  # type: ignore[arg-type]


def test_upstream_failed_is_terminal_not_failed_and_fails_the_run() -> None:
    assert "upstream_failed" in TERMINAL and "upstream_failed" not in FAILED
    assert decide_run_status({"done": 4, "upstream_failed": 1}, taken=5) == "error"
    assert decide_run_status({"done": 5}, taken=5) == "done"


def test_a_chain_with_nothing_upstream_still_runs_its_fan_in(tmp_path: Path) -> None:
    pipe = Pipeline("empty", db=tmp_path / "e.db")
    seen: list[Any] = []

    @pipe.task
    def parse(ctx: Context, n: int) -> int:
        return n

    @pipe.task
    def count(ctx: Context, values: list[int]) -> int:
        seen.append(values)
        return len(values)

    pipe.gather(count, pipe.map(parse, []))
    assert pipe.run(progress=False).counts == {"done": 1}
    assert seen == [[]]


def test_a_timed_out_upstream_blocks_its_downstream(tmp_path: Path) -> None:
    pipe = Pipeline("slow", db=tmp_path / "t.db", workers=2)

    @pipe.task(timeout=0.2)
    def fetch(ctx: Context, n: int) -> int:
        if n == 2:
            ctx.cancelled.wait(10)  # returns as soon as the attempt is given up
        return n

    @pipe.task
    def store(ctx: Context, n: int) -> int:
        return n

    pipe.map(store, pipe.map(fetch, [1, 2, 3]))
    result = pipe.run(progress=False)
    assert result.counts == {"done": 4, "timeout": 1, "upstream_failed": 1}
    assert query(tmp_path / "t.db", "SELECT status FROM task_runs WHERE task_key = 'store:2'") == [
        ("upstream_failed",)
    ]


def test_fail_fast_stops_the_chains_too(tmp_path: Path) -> None:
    pipe = Pipeline("ff", db=tmp_path / "ff.db", workers=1, fail_fast=True)
    ran: list[int] = []

    @pipe.task
    def first(ctx: Context, n: int) -> int:
        if n == 2:
            raise RuntimeError("stop here")
        return n

    @pipe.task
    def second(ctx: Context, n: int) -> int:
        ran.append(n)
        return n

    pipe.map(second, pipe.map(first, range(1, 50)))
    result = pipe.run(progress=False)
    assert result.status == "error"
    assert ran == [1]  # item 1 went all the way; nothing was admitted after item 2 failed
    assert result.counts == {"done": 2, "error": 1}
