import asyncio
import json
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeloom import (
    Context,
    MsgTaskFinished,
    MsgTaskProgress,
    MsgTaskStarted,
    Pipeline,
    PipelineError,
    TaskDef,
    TaskQueue,
    run_pipeline,
    utc_now,
)
from pipeloom.options import RunOptions
from pipeloom.pipeline import RESULT_MAX_CHARS, item_key, to_result
from tests._harness import query

COLUMNS = "task_id, task_key, name, status, progress, step, total, message, result, error, attempt"


def square(ctx: Context, n: int) -> dict[str, int]:
    for step in range(1, 4):
        ctx.progress(step, 3, f"step {step}")
    return {"n": n, "square": n * n}


def hand_written(task: TaskDef, msg_q: TaskQueue) -> None:
    n = task.payload
    msg_q.put(MsgTaskStarted(task.task_id, task.name, utc_now(), key=task.key))
    for step in range(1, 4):
        msg_q.put(MsgTaskProgress(task.task_id, step, 3, f"step {step}"))
    result = json.dumps({"n": n, "square": n * n})
    msg_q.put(MsgTaskFinished(task.task_id, "done", utc_now(), result=result))


def test_declarative_and_hand_written_worker_give_the_same_rows(tmp_path: Path) -> None:
    declarative_db, manual_db = tmp_path / "declarative.db", tmp_path / "manual.db"
    pipe = Pipeline("squares", db=declarative_db, workers=3)
    pipe.map(pipe.task(square), range(1, 6))
    declared = pipe.run(progress=False)

    tasks = [TaskDef(n, f"square:{n}", payload=n, key=f"square:{n}") for n in range(1, 6)]
    manual = run_pipeline(
        tasks, manual_db, worker_fn=hand_written, workers=3, progress=False, run_name="squares"
    )

    assert declared.counts == manual.counts == {"done": 5}
    sql = f"SELECT {COLUMNS} FROM task_runs ORDER BY task_id"
    assert query(declarative_db, sql) == query(manual_db, sql)
    assert query(declarative_db, "SELECT task_key, result FROM task_runs WHERE task_id = 2") == [
        ("square:2", '{"n": 2, "square": 4}')
    ]


def test_an_exception_is_recorded_as_error_with_its_traceback(tmp_path: Path) -> None:
    pipe = Pipeline("p", db=tmp_path / "p.db")

    @pipe.task
    def parse(ctx: Context, text: str) -> int:
        return int(text)

    pipe.map(parse, ["1", "two", "3"])
    result = pipe.run(progress=False)

    assert result.status == "error"
    assert result.counts == {"done": 2, "error": 1}
    assert result.failed_task_ids == [2]
    [(status, message, error)] = query(
        tmp_path / "p.db", "SELECT status, message, error FROM task_runs WHERE status != 'done'"
    )
    assert status == "error"
    assert message == "ValueError: invalid literal for int() with base 10: 'two'"
    assert "Traceback (most recent call last)" in error
    assert "return int(text)" in error


def test_generator_items_are_pulled_as_workers_free_up(tmp_path: Path) -> None:
    pulled: list[int] = []
    finished_before_pull: list[int] = []
    done: list[int] = []

    def items() -> Iterator[int]:
        for n in range(50):
            pulled.append(n)
            finished_before_pull.append(len(done))
            yield n

    pipe = Pipeline("gen", db=tmp_path / "g.db", workers=2)

    @pipe.task
    def work(ctx: Context, n: int) -> None:
        done.append(n)

    pipe.map(work, items())
    result = pipe.run(progress=False)

    assert result.counts == {"done": 50}
    assert len(pulled) == 50
    # Not materialised: the 50th item was pulled only after most work had finished.
    assert finished_before_pull[-1] >= 40


def test_context_carries_identity_and_logs_name_the_task(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[tuple[int, str | None, int, bool]] = []
    pipe = Pipeline("ctx", db=tmp_path / "c.db", workers=1)

    @pipe.task(name="fetch")
    def fetch(ctx: Context, page: int) -> None:
        seen.append((ctx.task_id, ctx.key, ctx.attempt, ctx.cancelled.is_set()))
        ctx.log.warning("fetched page %d", page)

    pipe.map(fetch, [7, 8])
    with caplog.at_level(logging.WARNING, logger="pipeloom"):
        logging.getLogger("pipeloom").propagate = True
        pipe.run(progress=False)

    assert sorted(seen) == [(1, "fetch:7", 1, False), (2, "fetch:8", 1, False)]
    records = [r for r in caplog.records if "fetched page" in r.getMessage()]
    assert sorted(r.getMessage() for r in records) == [
        "[fetch:7] fetched page 7",
        "[fetch:8] fetched page 8",
    ]
    assert {getattr(r, "task_key", None) for r in records} == {"fetch:7", "fetch:8"}


@dataclass(frozen=True, slots=True)
class MsgPrice:
    sku: str
    cents: int


def test_emitted_messages_reach_the_pipelines_handler(tmp_path: Path) -> None:
    def schema(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS prices (sku TEXT PRIMARY KEY, cents INTEGER)")

    pipe = Pipeline("prices", db=tmp_path / "p.db", schema=schema)

    @pipe.handler(MsgPrice)
    def save(conn: sqlite3.Connection, msgs: list[MsgPrice]) -> None:
        conn.executemany("INSERT INTO prices VALUES (?, ?)", [(m.sku, m.cents) for m in msgs])

    @pipe.task
    def scrape(ctx: Context, sku: str) -> None:
        ctx.emit(MsgPrice(sku, len(sku) * 100))

    pipe.map(scrape, ["a", "bb", "ccc"])
    assert pipe.run(progress=False).ok
    assert query(tmp_path / "p.db", "SELECT * FROM prices ORDER BY sku") == [
        ("a", 100),
        ("bb", 200),
        ("ccc", 300),
    ]


def test_emit_without_a_handler_fails_the_task_with_the_fix(tmp_path: Path) -> None:
    pipe = Pipeline("p", db=tmp_path / "p.db")

    @pipe.task
    def scrape(ctx: Context, sku: str) -> None:
        ctx.emit(MsgPrice(sku, 1))

    pipe.map(scrape, ["a"])
    assert pipe.run(progress=False).counts == {"error": 1}
    [(message,)] = query(tmp_path / "p.db", "SELECT message FROM task_runs")
    assert "no handler registered for MsgPrice" in message
    assert "@pipe.handler(MsgPrice)" in message


class Opaque:
    pass


@pytest.mark.parametrize(
    ("item", "key"),
    [
        ("data/a.csv", "data/a.csv"),
        (42, "42"),
        (Path("data") / "b.csv", str(Path("data") / "b.csv")),
        (("2024-01-01", 3), '["2024-01-01",3]'),
        ({"b": 1, "a": [1, 2]}, '{"a":[1,2],"b":1}'),
    ],
)
def test_keys_come_from_the_item(item: object, key: str) -> None:
    assert item_key(item) == key


def test_long_keys_end_in_a_hash_and_stay_distinct() -> None:
    a, b = item_key("x" * 500 + "a"), item_key("x" * 500 + "b")
    assert a != b
    assert len(a) <= 200
    assert a.startswith("xxxx")


def test_an_item_without_a_stable_repr_needs_a_key_function(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="pass key=lambda item"):
        item_key(Opaque())
    assert item_key(Opaque(), key=lambda o: "fixed") == "fixed"

    pipe = Pipeline("p", db=tmp_path / "p.db")
    pipe.map(pipe.task(lambda ctx, o: None, name="use"), [Opaque()])
    result = pipe.run(progress=False)
    assert result.counts == {"error": 1}
    [(message,)] = query(tmp_path / "p.db", "SELECT message FROM task_runs")
    assert "memory address" in message


def test_key_function_and_task_name_make_the_stored_key(tmp_path: Path) -> None:
    pipe = Pipeline("p", db=tmp_path / "p.db")

    @pipe.task
    def load(ctx: Context, row: dict[str, Any]) -> None:
        pass

    pipe.map(load, [{"id": 1, "v": "x"}, {"id": 2, "v": "y"}], key=lambda r: r["id"])
    pipe.run(progress=False)
    assert query(tmp_path / "p.db", "SELECT task_key FROM task_runs ORDER BY task_id") == [
        ("load:1",),
        ("load:2",),
    ]


def test_results_are_json_or_repr_and_capped() -> None:
    assert to_result(None) is None
    assert to_result("plain text") == "plain text"
    assert to_result({"rows": 3}) == '{"rows": 3}'
    assert to_result(Opaque()).startswith("<")  # type: ignore[union-attr]
    assert to_result(float("nan")) == "nan"
    capped = to_result("x" * (RESULT_MAX_CHARS + 5))
    assert capped is not None
    assert capped.endswith(f"[result truncated: {RESULT_MAX_CHARS + 5} chars in all]")


def test_items_from_a_failing_generator_become_a_failed_task(tmp_path: Path) -> None:
    def items() -> Iterator[int]:
        yield 1
        raise OSError("listing the bucket failed")

    pipe = Pipeline("p", db=tmp_path / "p.db", workers=1)
    pipe.map(pipe.task(lambda ctx, n: n, name="load"), items())
    result = pipe.run(progress=False)
    assert result.counts == {"done": 1, "error": 1}
    [(name, message)] = query(
        tmp_path / "p.db", "SELECT name, message FROM task_runs WHERE status = 'error'"
    )
    assert name == "load: items"
    assert message == "OSError: listing the bucket failed"


def test_misuse_gets_a_clear_error(tmp_path: Path) -> None:
    pipe = Pipeline("p", db=tmp_path / "p.db")
    with pytest.raises(PipelineError, match="no work"):
        pipe.run(progress=False)
    with pytest.raises(PipelineError, match="one task per character"):
        pipe.map(square, "abc")  # type: ignore[arg-type]
    pipe.task(square)
    pipe.task(square)  # the same def again (a notebook cell re-run) replaces it
    with pytest.raises(PipelineError, match="already taken"):
        pipe.task(name="square")(hand_written)  # type: ignore[arg-type]
    with pytest.raises(PipelineError, match="retries=-1"):
        pipe.task(name="other", retries=-1)(square)
    with pytest.raises(PipelineError, match="timeout=0"):
        pipe.task(name="other", timeout=0)(square)


def test_fail_fast_cancels_the_rest(tmp_path: Path) -> None:
    pipe = Pipeline("p", db=tmp_path / "p.db", workers=1, fail_fast=True)

    @pipe.task
    def work(ctx: Context, n: int) -> None:
        if n == 2:
            raise RuntimeError("boom")

    pipe.map(work, range(1, 11))
    result = pipe.run(progress=False)
    assert result.status == "error"
    assert result.counts["done"] == 1
    assert result.counts["error"] == 1
    assert "cancelled" not in result.counts
    assert result.not_started == 8


def test_pipeline_is_marked_for_the_cli() -> None:
    assert Pipeline.__pipeloom_pipeline__ is True
    assert getattr(Pipeline("p"), "__pipeloom_pipeline__", False) is True


def test_async_tasks_run_on_their_own_event_loop(tmp_path: Path) -> None:
    pipe = Pipeline("aio", db=tmp_path / "a.db", workers=2)

    @pipe.task(retries=1, backoff=0.001)
    async def fetch(ctx: Context, n: int) -> int:
        await asyncio.sleep(0)
        if n == 2 and ctx.attempt == 1:
            raise ConnectionError("first try fails")
        return n * 3

    pipe.map(fetch, [1, 2])
    assert pipe.run(progress=False).ok
    assert query(tmp_path / "a.db", "SELECT result, attempt FROM task_runs ORDER BY task_id") == [
        ("3", 1),
        ("6", 2),
    ]


def test_a_generator_read_by_an_earlier_run_is_flagged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pipe = Pipeline("gen", db=tmp_path / "g.db")
    pipe.map(pipe.task(lambda ctx, n: n, name="w"), (n for n in range(3)))
    assert pipe.run(progress=False).counts == {"done": 3}
    logging.getLogger("pipeloom").propagate = True
    with caplog.at_level(logging.WARNING, logger="pipeloom.pipeline"):
        assert pipe.run(progress=False).counts == {}
    assert "an iterator an earlier run already read" in caplog.text


def test_a_pipeline_reaches_every_writer_setting_through_run_options(tmp_path: Path) -> None:
    db = tmp_path / "opts.db"
    batches: list[int] = []
    pipe = Pipeline(
        "opts",
        db=db,
        workers=2,
        options=RunOptions(
            synchronous="FULL",
            batch_size=1,
            lease=7.5,
            listeners=(lambda b: batches.append(b.messages),),
        ),
    )

    @pipe.task
    def work(ctx: Context, n: int) -> int:
        return n

    pipe.map(work, range(1, 6))
    assert pipe.run(progress=False).ok
    assert batches and max(batches) == 1  # batch_size=1 reached the writer
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT lease_s FROM pipeline_runs").fetchone() == (7.5,)
    finally:
        conn.close()
    # A run may override them; a misspelt level is refused, not silently NORMAL.
    with pytest.raises(ValueError, match=r"RunOptions\(synchronous='FUL'\)"):
        pipe.run(progress=False, options=RunOptions(synchronous="FUL"))  # type: ignore[arg-type]
