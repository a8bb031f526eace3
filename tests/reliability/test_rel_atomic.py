"""A task's domain data commits with its success: all of an attempt's messages, or none.

Each test runs a real pipeline (or a real writer) against a SQLite file in tmp_path and reads
the file back with a fresh connection, the way a user would.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeloom import (
    SENTINEL,
    Context,
    MessageQueue,
    MsgTaskFinished,
    MsgTaskStarted,
    Pipeline,
    SQLiteWriter,
    utc_now,
)
from pipeloom.pipeline import OutputLimitError
from tests._harness import query


@dataclass(frozen=True, slots=True)
class MsgRow:
    file: str
    n: int
    amount: int
    attempt: int = 1


def schema(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS rows (file TEXT, n INTEGER, amount INTEGER "
        "CHECK (amount >= 0), attempt INTEGER, PRIMARY KEY (file, n))"
    )


def upsert_rows(conn: sqlite3.Connection, msgs: list[MsgRow]) -> None:
    conn.executemany(
        "INSERT INTO rows VALUES (?, ?, ?, ?) ON CONFLICT (file, n) DO UPDATE SET "
        "amount = excluded.amount, attempt = excluded.attempt",
        [(m.file, m.n, m.amount, m.attempt) for m in msgs],
    )


def make_pipe(db: Path, **kwargs: Any) -> Pipeline:
    return Pipeline("atomic", db=db, schema=schema, handlers={MsgRow: upsert_rows}, **kwargs)


def rows_of(db: Path, file: str) -> int:
    return int(query(db, "SELECT count(*) FROM rows WHERE file = ?", file)[0][0])


def task_row(db: Path, key_suffix: str) -> tuple[Any, ...]:
    found = query(
        db,
        "SELECT status, attempt, message, error FROM task_runs WHERE task_key LIKE ?",
        f"%:{key_suffix}",
    )
    assert len(found) == 1, found
    return found[0]


def test_a_csv_file_failing_at_row_200_leaves_none_of_its_rows(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for day in range(1, 5):
        lines = [f"{i},{i * day}" for i in range(400)]
        if day == 3:
            lines[199] = "199,not-a-number"
        (data / f"day{day}.csv").write_text("id,amount\n" + "\n".join(lines) + "\n")
    db = tmp_path / "etl.db"
    pipe = make_pipe(db, workers=2)

    @pipe.task
    def load(ctx: Context, path: Path) -> int:
        lines = path.read_text().splitlines()[1:]
        for line in lines:
            n, amount = line.split(",")
            ctx.emit(MsgRow(path.name, int(n), int(amount)))
        return len(lines)

    pipe.map(load, sorted(data.glob("*.csv")), key=lambda p: p.name)
    result = pipe.run(progress=False)

    assert result.counts == {"done": 3, "error": 1}
    status, _, message, error = task_row(db, "day3.csv")
    assert status == "error"
    assert message.startswith("ValueError: invalid literal for int()")
    assert "199 emitted messages of this attempt discarded" in message
    assert "in load" in error  # the user's own frame
    assert rows_of(db, "day3.csv") == 0
    for day in (1, 2, 4):
        assert rows_of(db, f"day{day}.csv") == 400
    assert query(db, "SELECT count(*) FROM dead_letters") == [(0,)]


def test_a_retried_task_keeps_exactly_the_successful_attempts_rows(tmp_path: Path) -> None:
    db = tmp_path / "retry.db"
    pipe = make_pipe(db)

    @pipe.task(retries=1, backoff=0)
    def load(ctx: Context, name: str) -> str:
        for i in range(50):
            ctx.emit(MsgRow(name, i, i, ctx.attempt))
            if ctx.attempt == 1 and i == 29:
                raise ConnectionError("source went away after 30 rows")
        return "ok"

    pipe.map(load, ["a"])
    result = pipe.run(progress=False)

    assert result.ok
    assert task_row(db, "a")[:2] == ("done", 2)
    assert query(db, "SELECT count(*), min(attempt), max(attempt) FROM rows") == [(50, 2, 2)]
    assert query(db, "SELECT attempt, status, discarded FROM task_attempts") == [(1, "error", 30)]


def test_a_rejected_message_fails_its_task_and_leaves_none_of_its_rows(tmp_path: Path) -> None:
    db = tmp_path / "reject.db"
    pipe = make_pipe(db, workers=2)

    @pipe.task
    def load(ctx: Context, name: str) -> int:
        for i in range(100):
            amount = -1 if (name == "bad" and i == 60) else i
            ctx.emit(MsgRow(name, i, amount))
        return 100

    names = ["a", "b", "bad", "c", "d"]
    pipe.map(load, names)
    result = pipe.run(progress=False)

    assert result.counts == {"done": 4, "error": 1}
    status, _, message, error = task_row(db, "bad")
    assert status == "error"
    assert "handler upsert_rows rejected MsgRow output 61 of 100" in message
    assert "CHECK constraint failed" in message
    assert "100 output messages dead-lettered" in message
    assert "IntegrityError" in error
    assert rows_of(db, "bad") == 0
    for name in ("a", "b", "c", "d"):
        assert rows_of(db, name) == 100
    # The row that broke it is named on the task and stored first; the rest point to it.
    assert "rejected MsgRow output 61 of 100 (IntegrityError: CHECK" in message
    assert "applied: MsgRow(file='bad', n=60, amount=-1, attempt=1)" in message
    dead = query(db, "SELECT id, msg_type, payload, error FROM dead_letters ORDER BY id")
    assert len(dead) == 100
    assert all(d[1].endswith("MsgRow") and '"bad"' in d[2] for d in dead)
    assert all("upsert_rows" in d[3] for d in dead)
    assert '"n": 60' in dead[0][2] and "this MsgRow (output 61 of 100) was rejected" in dead[0][3]
    assert all(f"(dead letter {dead[0][0]})" in d[3] for d in dead[1:])
    assert result.messages == query(db, "SELECT messages FROM pipeline_runs")[0][0]


def test_outputs_of_many_tasks_reach_the_handler_together(tmp_path: Path) -> None:
    """The low-level recipe: a worker puts its outputs on its finish; batching still holds."""
    db = tmp_path / "low.db"
    calls: list[int] = []

    def counting(conn: sqlite3.Connection, msgs: list[MsgRow]) -> None:
        calls.append(len(msgs))
        upsert_rows(conn, msgs)

    q = MessageQueue()
    writer = SQLiteWriter(db, q, schema=schema, handlers={MsgRow: counting})
    for task_id in range(1, 5):
        q.put(MsgTaskStarted(task_id, f"t{task_id}", utc_now()))
    for task_id in range(1, 5):
        outputs = [MsgRow(f"t{task_id}", i, i) for i in range(10)]
        q.put(MsgTaskFinished(task_id, "done", utc_now(), outputs=outputs))
    q.put(SENTINEL)  # all of it waits in the queue, so the writer takes it as one batch
    writer.start()
    writer.join(10)
    writer.raise_if_failed()

    assert calls == [40]  # one handler call for the four tasks' rows
    assert query(db, "SELECT count(*) FROM rows") == [(40,)]
    assert query(db, "SELECT status, count(*) FROM task_runs GROUP BY status") == [("done", 4)]
    assert writer.messages_applied == 48 and writer.messages_dead == 0


def test_one_bad_task_in_a_batch_costs_only_itself(tmp_path: Path) -> None:
    db = tmp_path / "batch.db"
    calls: list[int] = []

    def counting(conn: sqlite3.Connection, msgs: list[MsgRow]) -> None:
        calls.append(len(msgs))
        upsert_rows(conn, msgs)

    q = MessageQueue()
    writer = SQLiteWriter(db, q, schema=schema, handlers={MsgRow: counting})
    for task_id in range(1, 4):
        outputs = [
            MsgRow(f"t{task_id}", i, -1 if task_id == 2 and i == 5 else i) for i in range(10)
        ]
        q.put(MsgTaskStarted(task_id, f"t{task_id}", utc_now()))
        q.put(MsgTaskFinished(task_id, "done", utc_now(), result="r", outputs=outputs))
    q.put(SENTINEL)
    writer.start()
    writer.join(10)
    writer.raise_if_failed()

    # Together first, then task by task; after task 2 failed, prefixes of its rows (5 pass, 7
    # and 6 fail: its 6th row broke it), then task 3.
    assert calls == [30, 10, 10, 5, 7, 6, 10]
    assert query(db, "SELECT file, count(*) FROM rows GROUP BY file") == [("t1", 10), ("t3", 10)]
    statuses = query(db, "SELECT task_id, status, result FROM task_runs ORDER BY task_id")
    assert statuses == [(1, "done", "r"), (2, "error", None), (3, "done", "r")]
    assert query(db, "SELECT count(*) FROM dead_letters") == [(10,)]
    assert writer.failed_task_ids == [2]
    assert writer.messages_applied + writer.messages_dead == 36


def test_outputs_stay_atomic_without_pipeloom_tables(tmp_path: Path) -> None:
    db = tmp_path / "plain.db"
    q = MessageQueue()
    writer = SQLiteWriter(
        db, q, schema=schema, handlers={MsgRow: upsert_rows}, store_task_status=False
    )
    for task_id in (1, 2):
        outputs = [MsgRow(f"t{task_id}", i, -i if task_id == 2 else i) for i in range(5)]
        q.put(MsgTaskFinished(task_id, "done", utc_now(), outputs=outputs))
    q.put(SENTINEL)
    writer.start()
    writer.join(10)
    writer.raise_if_failed()

    assert query(db, "SELECT file, count(*) FROM rows GROUP BY file") == [("t1", 5)]
    assert writer.status_counts == {"done": 1, "error": 1}
    tables = {r[0] for r in query(db, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"rows"}


def test_outputs_are_applied_once_and_only_with_done(tmp_path: Path) -> None:
    db = tmp_path / "once.db"
    q = MessageQueue()
    writer = SQLiteWriter(db, q, schema=schema, handlers={MsgRow: upsert_rows})
    q.put(MsgTaskStarted(1, "t1", utc_now()))
    q.put(MsgTaskFinished(1, "done", utc_now(), outputs=[MsgRow("t1", 0, 1)]))
    # A duplicate finish must not apply its outputs a second time (they are kept as dead).
    q.put(MsgTaskFinished(1, "done", utc_now(), outputs=[MsgRow("t1", 0, 99)]))
    # A failed finish never applies its outputs.
    q.put(MsgTaskStarted(2, "t2", utc_now()))
    q.put(MsgTaskFinished(2, "error", utc_now(), message="boom", outputs=[MsgRow("t2", 0, 1)]))
    q.put(SENTINEL)
    writer.start()
    writer.join(10)
    writer.raise_if_failed()

    assert query(db, "SELECT file, amount FROM rows") == [("t1", 1)]
    assert query(db, "SELECT task_id, status FROM task_runs ORDER BY 1") == [
        (1, "done"),
        (2, "error"),
    ]
    dead = query(db, "SELECT payload, error FROM dead_letters")
    assert len(dead) == 1 and "99" in dead[0][0] and "already recorded done" in dead[0][1]


def test_a_timed_out_attempts_late_emits_are_never_applied(tmp_path: Path) -> None:
    db = tmp_path / "timeout.db"
    pipe = make_pipe(db, grace=10)
    release = threading.Event()
    late_sent = threading.Event()

    @pipe.task(timeout=0.2, retries=1, backoff=0)
    def load(ctx: Context, name: str) -> str:
        if ctx.attempt == 1:
            for i in range(5):
                ctx.emit(MsgRow(name, i, i, 1))
            release.wait(10)  # only the second attempt releases it: this attempt times out
            for i in range(5, 10):
                ctx.emit(MsgRow(name, i, i, 1))  # after it was abandoned
            late_sent.set()
            return "late"
        release.set()
        assert late_sent.wait(10)
        for i in range(3):
            ctx.emit(MsgRow(name, i, i, 2))
        return "ok"

    pipe.map(load, ["slow"])
    result = pipe.run(progress=False)

    assert result.ok and result.extra["abandoned_threads"] == 0
    assert query(db, "SELECT n, attempt FROM rows ORDER BY n") == [(0, 2), (1, 2), (2, 2)]
    assert query(db, "SELECT attempt, status, discarded FROM task_attempts") == [(1, "timeout", 5)]


@pytest.mark.parametrize(("atomic", "visible"), [(False, 10), (True, 0)])
def test_atomic_false_streams_rows_before_the_task_ends(
    tmp_path: Path, atomic: bool, visible: int
) -> None:
    db = tmp_path / "stream.db"
    pipe = make_pipe(db)

    @pipe.task(atomic=atomic)
    def load(ctx: Context, name: str) -> int:
        for i in range(10):
            ctx.emit(MsgRow(name, i, i))
        ctx.progress(1, 2, "emitted")  # sent after the rows, on the same queue
        reader = sqlite3.connect(db)
        try:
            deadline = time.monotonic() + 10
            sql = "SELECT count(*) FROM task_runs WHERE task_id = ? AND step = 1"
            while reader.execute(sql, (ctx.task_id,)).fetchone()[0] != 1:
                assert time.monotonic() < deadline, "progress never became visible"
                time.sleep(0.005)
            # The progress is committed, so anything streamed before it is committed too.
            return int(reader.execute("SELECT count(*) FROM rows").fetchone()[0])
        finally:
            reader.close()

    pipe.map(load, ["big"])
    result = pipe.run(progress=False)

    assert result.ok
    assert query(db, "SELECT result FROM task_runs") == [(str(visible),)]
    assert rows_of(db, "big") == 10


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken too")


def test_an_exception_whose_str_raises_is_retried_and_recorded_as_itself(
    tmp_path: Path,
) -> None:
    db = tmp_path / "str.db"
    pipe = make_pipe(db)

    @pipe.task(retries=2, backoff=0)
    def flaky(ctx: Context, name: str) -> None:
        ctx.emit(MsgRow(name, ctx.attempt, 1))
        raise UnprintableError

    pipe.map(flaky, ["x"])
    result = pipe.run(progress=False)

    assert result.counts == {"error": 1}
    status, attempt, message, error = task_row(db, "x")
    assert (status, attempt) == ("error", 3)
    assert message.startswith("UnprintableError")
    assert "1 emitted message of this attempt discarded" in message
    assert "UnprintableError" in error and "in flaky" in error
    assert "pipeloom/pipeline/" not in error.splitlines()[-1]
    assert query(db, "SELECT attempt, discarded FROM task_attempts ORDER BY attempt") == [
        (1, 1),
        (2, 1),
    ]
    assert rows_of(db, "x") == 0


def test_an_atomic_task_over_max_outputs_fails_clearly_and_is_not_retried(
    tmp_path: Path,
) -> None:
    db = tmp_path / "limit.db"
    pipe = make_pipe(db)

    @pipe.task(retries=3, backoff=0, max_outputs=5)
    def load(ctx: Context, name: str) -> None:
        for i in range(6):
            ctx.emit(MsgRow(name, i, i))

    pipe.map(load, ["huge"])
    result = pipe.run(progress=False)

    assert result.counts == {"error": 1}
    status, attempt, message, _ = task_row(db, "huge")
    assert (status, attempt) == ("error", 1)
    assert message.startswith(f"{OutputLimitError.__name__}: task")
    assert "max_outputs=5" in message and "atomic=False" in message
    assert "5 emitted messages of this attempt discarded" in message
    assert rows_of(db, "huge") == 0


def test_a_task_that_swallows_the_output_limit_still_fails(tmp_path: Path) -> None:
    db = tmp_path / "swallow.db"
    pipe = make_pipe(db)

    @pipe.task(max_outputs=3)
    def load(ctx: Context, name: str) -> str:
        try:
            for i in range(10):
                ctx.emit(MsgRow(name, i, i))
        except OutputLimitError:
            pass  # committing the first 3 rows as "done" would be a silent partial load
        return "finished anyway"

    pipe.map(load, ["greedy"])
    result = pipe.run(progress=False)

    assert result.counts == {"error": 1}
    assert "max_outputs=3" in task_row(db, "greedy")[2]
    assert rows_of(db, "greedy") == 0


def test_a_duplicate_key_names_the_second_of_the_two_rows(tmp_path: Path) -> None:
    db = tmp_path / "dup.db"

    def insert_only(conn: sqlite3.Connection, msgs: list[MsgRow]) -> None:
        conn.executemany(
            "INSERT INTO rows VALUES (?, ?, ?, ?)", [(m.file, m.n, m.amount, 1) for m in msgs]
        )

    pipe = Pipeline("dup", db=db, schema=schema, handlers={MsgRow: insert_only})

    @pipe.task
    def load(ctx: Context, name: str) -> int:
        for n in (0, 1, 2, 3, 1, 4):  # n=1 twice: the 5th row breaks the primary key
            ctx.emit(MsgRow(name, n, n))
        return 6

    pipe.map(load, ["twice"])
    result = pipe.run(progress=False)

    assert result.counts == {"error": 1}
    message = task_row(db, "twice")[2]
    assert "UNIQUE constraint failed: rows.file, rows.n" in message
    assert "rejected MsgRow output 5 of 6 (IntegrityError: UNIQUE" in message
    assert "applied: MsgRow(file='twice', n=1, amount=1, attempt=1)" in message
    assert rows_of(db, "twice") == 0
    assert query(db, "SELECT count(*) FROM dead_letters") == [(6,)]


@dataclass(frozen=True, slots=True)
class MsgParent:
    name: str


@dataclass(frozen=True, slots=True)
class MsgChild:
    parent: str
    n: int


def family_schema(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS parents (name TEXT PRIMARY KEY)")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS children (parent TEXT NOT NULL REFERENCES parents (name), "
        "n INTEGER NOT NULL)"
    )


def test_the_named_row_is_found_with_the_tasks_earlier_types_applied(tmp_path: Path) -> None:
    """A child row needs the parents the same task sent first: the search applies them too."""
    db = tmp_path / "family.db"

    def save_parents(conn: sqlite3.Connection, msgs: list[MsgParent]) -> None:
        conn.executemany("INSERT INTO parents VALUES (?)", [(m.name,) for m in msgs])

    def save_children(conn: sqlite3.Connection, msgs: list[MsgChild]) -> None:
        conn.executemany("INSERT INTO children VALUES (?, ?)", [(m.parent, m.n) for m in msgs])

    pipe = Pipeline(
        "family",
        db=db,
        schema=family_schema,
        handlers={MsgParent: save_parents, MsgChild: save_children},
    )

    @pipe.task
    def load(ctx: Context, name: str) -> int:
        ctx.emit_many([MsgParent("ann"), MsgParent("bob")])
        children = [MsgChild("ann" if n % 2 else "bob", n) for n in range(10)]
        children[6] = MsgChild("eve", 6)  # no such parent: the foreign key fails here
        ctx.emit_many(children)
        return 12

    pipe.map(load, ["family"])
    result = pipe.run(progress=False)

    assert result.counts == {"error": 1}
    message = task_row(db, "family")[2]
    assert "FOREIGN KEY constraint failed" in message
    assert "rejected MsgChild output 9 of 12" in message  # not output 3, the first child
    assert "applied: MsgChild(parent='eve', n=6)" in message
    assert query(db, "SELECT count(*) FROM parents") == [(0,)]
    assert query(db, "SELECT count(*) FROM dead_letters") == [(12,)]
