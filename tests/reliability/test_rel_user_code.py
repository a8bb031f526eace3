"""The writer survives its users' code: a schema callable or a handler cannot wreck the run.

A ``schema=`` callable that raises leaves no lock behind and is named in the error. A handler
that commits or rolls back the writer's transaction is that handler's failure: its messages
are dead-lettered with a reason naming it and what it did, and nothing else of the batch is
lost, whether the writer refused the statement or the handler got past the refusal.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeloom import (
    SENTINEL,
    Context,
    DatabaseError,
    MessageQueue,
    MsgTaskFinished,
    MsgTaskStarted,
    Pipeline,
    SQLiteWriter,
    TaskDef,
    TaskQueue,
    WriterFailedError,
    run_pipeline,
    utc_now,
)
from tests._harness import query


class SchemaBug(Exception):
    """What a user's schema callable raised."""


def broken_schema(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE half (x INTEGER)")
    raise SchemaBug("forgot a column")


def good_schema(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS prices (x INTEGER)")


def script_schema(conn: sqlite3.Connection) -> None:
    conn.executescript("CREATE TABLE IF NOT EXISTS scripted (x INTEGER);")


def _noop(task: TaskDef, q: TaskQueue) -> None:
    q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
    q.put(MsgTaskFinished(task.task_id, "done", utc_now()))


def test_a_raising_schema_callable_leaves_no_lock_and_is_named(tmp_path: Path) -> None:
    db = tmp_path / "schema.db"
    tasks = [TaskDef(i, f"t{i}") for i in range(1, 4)]
    with pytest.raises(DatabaseError) as info:
        run_pipeline(tasks, db, worker_fn=_noop, workers=1, progress=False, schema=broken_schema)
    message = str(info.value)
    assert "broken_schema" in message and "SchemaBug: forgot a column" in message, message
    assert str(db) in message

    # Another connection can write at once: no BEGIN IMMEDIATE was left open.
    other = sqlite3.connect(db, timeout=0)
    try:
        other.execute("CREATE TABLE elsewhere (x INTEGER)")
        other.commit()
        tables = {r[0] for r in other.execute("SELECT name FROM sqlite_master")}
    finally:
        other.close()
    assert "half" not in tables, "nothing the failed schema did was kept"

    # And a second run in the same process works.
    result = run_pipeline(tasks, db, worker_fn=_noop, workers=1, progress=False, schema=good_schema)
    assert result.ok and result.counts == {"done": 3}


def test_a_schema_callable_may_use_executescript(tmp_path: Path) -> None:
    """executescript commits first; the schema it made is kept and the run goes on."""
    db = tmp_path / "script.db"
    tasks = [TaskDef(1, "t1")]
    result = run_pipeline(
        tasks, db, worker_fn=_noop, workers=1, progress=False, schema=script_schema
    )
    assert result.ok
    assert query(db, "SELECT name FROM sqlite_master WHERE name = 'scripted'") == [("scripted",)]


@dataclass(frozen=True)
class MsgGood:
    """Applied by a well-behaved handler, before the bad one in the batch."""

    value: int


@dataclass(frozen=True)
class MsgBad:
    """Applied by a handler that ends the writer's transaction for odd values."""

    value: int


@dataclass(frozen=True)
class MsgLate:
    """Applied by a well-behaved handler, after the bad one in the batch."""

    value: int


def on_good(conn: sqlite3.Connection, msgs: list[MsgGood]) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS good (value INTEGER)")
    conn.executemany("INSERT INTO good VALUES (?)", [(m.value,) for m in msgs])


def on_late(conn: sqlite3.Connection, msgs: list[MsgLate]) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS late (value INTEGER)")
    conn.executemany("INSERT INTO late VALUES (?)", [(m.value,) for m in msgs])


def _commit(conn: sqlite3.Connection) -> None:
    conn.commit()


def _execute(sql: str) -> Callable[[sqlite3.Connection], None]:
    def run(conn: sqlite3.Connection) -> None:
        conn.execute(sql)

    return run


def _rollback(conn: sqlite3.Connection) -> None:
    conn.rollback()


def _script(conn: sqlite3.Connection) -> None:
    conn.executescript("SELECT 1;")  # commits first


def _with_conn(conn: sqlite3.Connection) -> None:
    with conn:  # commits on the way out
        conn.execute("SELECT 1")


def _bypass(end: Callable[[sqlite3.Connection], None]) -> Callable[[sqlite3.Connection], None]:
    """Get past the writer's guard first: only its detection after the fact is left."""

    def run(conn: sqlite3.Connection) -> None:
        conn.set_authorizer(None)
        end(conn)

    return run


def _commit_and_begin(conn: sqlite3.Connection) -> None:
    conn.commit()
    conn.execute("BEGIN")


ENDINGS: dict[str, tuple[Callable[[sqlite3.Connection], None], str]] = {
    "conn.commit()": (_commit, "COMMIT"),
    "COMMIT": (_execute("COMMIT"), "COMMIT"),
    "conn.rollback()": (_rollback, "ROLLBACK"),
    "ROLLBACK": (_execute("ROLLBACK"), "ROLLBACK"),
    "executescript": (_script, "COMMIT"),
    "with conn:": (_with_conn, "COMMIT"),
    "RELEASE pipeloom_group": (_execute("RELEASE pipeloom_group"), "RELEASE"),
    "bypass, commit": (_bypass(_commit), "COMMIT"),
    "bypass, rollback": (_bypass(_rollback), "ROLLBACK"),
    "bypass, commit, begin": (_bypass(_commit_and_begin), "COMMIT"),
}


def _bad_handler(end: Callable[[sqlite3.Connection], None]) -> Any:
    def on_bad(conn: sqlite3.Connection, msgs: list[MsgBad]) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS bad (value INTEGER)")
        for msg in msgs:
            if msg.value % 2:
                end(conn)
            conn.execute("INSERT INTO bad VALUES (?)", (msg.value,))

    return on_bad


TASKS = range(1, 7)


def _batch() -> list[Any]:
    """One batch: lifecycle, good messages, the bad handler's, then late ones."""
    msgs: list[Any] = []
    for i in TASKS:
        msgs += [MsgTaskStarted(i, f"t{i}", utc_now()), MsgGood(i)]
    msgs += [MsgBad(1), MsgBad(2), MsgBad(3)]
    for i in TASKS:
        msgs += [MsgLate(i), MsgTaskFinished(i, "done", utc_now(), result=f"r{i}")]
    return msgs


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_a_handler_ending_the_transaction_costs_only_its_messages(
    tmp_path: Path, ending: str
) -> None:
    end, what = ENDINGS[ending]
    db = tmp_path / "handler.db"
    q = MessageQueue()
    writer = SQLiteWriter(
        db, q, handlers={MsgGood: on_good, MsgBad: _bad_handler(end), MsgLate: on_late}
    )
    msgs = _batch()
    for msg in msgs:  # queued before the writer starts: one batch, one transaction
        q.put(msg)
    q.put(SENTINEL)
    writer.start()
    writer.join(timeout=30)
    assert not writer.is_alive()
    assert writer.error is None, writer.error

    rows = query(db, "SELECT task_id, name, status, result FROM task_runs ORDER BY task_id")
    assert rows == [(i, f"t{i}", "done", f"r{i}") for i in TASKS], "every task row is kept"
    assert query(db, "SELECT value FROM good ORDER BY value") == [(i,) for i in TASKS]
    assert query(db, "SELECT value FROM late ORDER BY value") == [(i,) for i in TASKS], (
        "applied exactly once, also after a replay"
    )
    dead = query(db, "SELECT msg_type, payload, error FROM dead_letters ORDER BY id")
    bad_values = sorted(int(p.split(":")[1].strip(" }")) for _, p, _ in dead)
    if ending.startswith("bypass"):
        # Past the guard the handler's whole call fails: every message it was given is dead.
        assert bad_values == [1, 2, 3]
    else:
        # The refusal is an error inside the handler: retried one by one, only odd ones fail.
        assert bad_values == [1, 3]
        assert query(db, "SELECT value FROM bad") == [(2,)]
    for msg_type, _, error in dead:
        assert msg_type.endswith("MsgBad")
        assert "handler _bad_handler.<locals>.on_bad for MsgBad" in error, error
        assert f"the writer's transaction ({what})" in error, error
        assert "handlers must not commit" in error
    assert (writer.messages_applied, writer.messages_dead) == (len(msgs) - len(dead), len(dead))
    assert query(db, "SELECT status FROM pipeline_runs") == [("done",)]


def test_through_run_pipeline_a_committing_handler_does_not_stop_the_run(tmp_path: Path) -> None:
    def worker(task: TaskDef, q: TaskQueue) -> None:
        q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
        q.put(MsgGood(task.task_id))
        q.put(MsgBad(task.task_id))
        q.put(MsgTaskFinished(task.task_id, "done", utc_now()))

    def on_bad(conn: sqlite3.Connection, msgs: list[MsgBad]) -> None:
        conn.execute("COMMIT")  # the writer ran this very text before: a cached statement

    db = tmp_path / "engine.db"
    result = run_pipeline(
        [TaskDef(i, f"t{i}") for i in range(1, 31)],
        db,
        worker_fn=worker,
        workers=3,
        progress=False,
        handlers={MsgGood: on_good, MsgBad: on_bad},
    )
    assert result.ok and result.counts == {"done": 30}
    assert result.dead_letters == 30
    assert query(db, "SELECT count(*) FROM good") == [(30,)]
    reasons = {r[0] for r in query(db, "SELECT error FROM dead_letters")}
    assert len(reasons) == 1 and "on_bad for MsgBad" in reasons.pop()


def test_a_handler_closing_the_connection_is_named(tmp_path: Path) -> None:
    """Closing cannot be undone: the run stops, and the error says which handler did it."""

    def on_good_then_close(conn: sqlite3.Connection, msgs: list[MsgGood]) -> None:
        conn.close()

    def worker(task: TaskDef, q: TaskQueue) -> None:
        q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
        q.put(MsgGood(task.task_id))
        q.put(MsgTaskFinished(task.task_id, "done", utc_now()))

    with pytest.raises(WriterFailedError) as info:
        run_pipeline(
            [TaskDef(i, f"t{i}") for i in range(1, 5)],
            tmp_path / "closed.db",
            worker_fn=worker,
            workers=1,
            progress=False,
            handlers={MsgGood: on_good_then_close},
        )
    message = str(info.value)
    assert "handler " in message and "on_good_then_close for MsgGood" in message, message
    assert "closed the writer's connection" in message


def test_a_committing_handler_of_atomic_task_output_fails_only_its_task(tmp_path: Path) -> None:
    """A task's outputs apply with its finish; a handler that commits fails that task alone."""
    db = tmp_path / "atomic.db"
    pipe = Pipeline("atomic", db=db, workers=2, schema=good_schema)

    @pipe.handler(MsgGood)
    def save(conn: sqlite3.Connection, msgs: list[MsgGood]) -> None:
        for msg in msgs:
            if msg.value == 3:
                conn.commit()
            conn.execute("INSERT INTO prices VALUES (?)", (msg.value,))

    @pipe.task
    def emit(ctx: Context, item: int) -> int:
        ctx.emit(MsgGood(item))
        return item

    pipe.map(emit, range(1, 7))
    result = pipe.run(progress=False)
    statuses = dict(query(db, "SELECT task_key, status FROM task_runs"))
    assert statuses == {f"emit:{i}": "error" if i == 3 else "done" for i in range(1, 7)}
    assert query(db, "SELECT x FROM prices ORDER BY x") == [(i,) for i in (1, 2, 4, 5, 6)]
    assert result.counts == {"done": 5, "error": 1}
