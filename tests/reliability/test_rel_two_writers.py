"""Two writers on one file whose handlers read before they write (a read-modify-write)."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

import pipeloom.db
from pipeloom import (
    SENTINEL,
    MessageQueue,
    MsgTaskFinished,
    MsgTaskStarted,
    SQLiteWriter,
    TaskDef,
    TaskQueue,
    WriterFailedError,
    run_pipeline,
    utc_now,
)
from tests._harness import query
from tests.reliability._support import integrity

MESSAGES = 3000


@dataclass(frozen=True)
class MsgCount:
    """Append the next number of one writer's sequence."""

    writer: str


def _schema(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS seq (writer TEXT, n INTEGER)")


def _append(conn: sqlite3.Connection, msgs: list[MsgCount]) -> None:
    for msg in msgs:
        (last,) = conn.execute(
            "SELECT coalesce(max(n), 0) FROM seq WHERE writer = ?", (msg.writer,)
        ).fetchone()
        conn.execute("INSERT INTO seq VALUES (?, ?)", (msg.writer, last + 1))


@pytest.mark.timeout(90)
def test_read_then_write_handlers_in_two_writers_never_see_locked(tmp_path: Path) -> None:
    """A deferred transaction that reads first fails at once with SQLITE_BUSY if the other
    writer commits in between (the busy timeout does not apply to that case); the writer
    must take the write lock up front so no message is dead-lettered as "locked"."""
    db = tmp_path / "two.db"
    writers: list[SQLiteWriter] = []
    for name in ("a", "b"):
        q = MessageQueue()
        w = SQLiteWriter(
            db,
            q,
            handlers={MsgCount: _append},
            schema=_schema,
            run_name=name,
            batch_size=7,
            commit_interval=0.0,
        )
        writers.append(w)
    for w in writers:
        w.start()
        w.ready.wait()

    def feed(w: SQLiteWriter, name: str) -> None:
        for _ in range(MESSAGES):
            w.msg_q.put(MsgCount(name))  # type: ignore[attr-defined]
        w.msg_q.put(SENTINEL)  # type: ignore[attr-defined]

    feeders = [
        threading.Thread(target=feed, args=(w, n)) for w, n in zip(writers, "ab", strict=True)
    ]
    for f in feeders:
        f.start()
    for f in feeders:
        f.join()
    for w in writers:
        w.join(timeout=60)
        assert w.error is None, w.error
    dead = query(db, "SELECT error FROM dead_letters")
    assert dead == [], dead[:3]
    assert sorted(query(db, "SELECT writer, count(*), max(n) FROM seq GROUP BY writer")) == [
        ("a", MESSAGES, MESSAGES),
        ("b", MESSAGES, MESSAGES),
    ]
    assert integrity(db) == "ok"


@pytest.mark.timeout(60)
def test_a_lock_held_past_the_busy_timeout_stops_the_run_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another program keeps the write lock: after the busy timeout (shortened here) the run
    raises WriterFailedError saying so, rather than hanging or dropping messages quietly."""
    monkeypatch.setattr(pipeloom.db, "BUSY_TIMEOUT_MS", 300)
    db = tmp_path / "held.db"
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    took_lock = threading.Event()

    def worker(task: TaskDef, q: TaskQueue) -> None:
        if task.task_id == 1:  # the file exists now: another program grabs the write lock
            holder.execute("BEGIN IMMEDIATE")
            took_lock.set()
        q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
        q.put(MsgTaskFinished(task.task_id, "done", utc_now()))

    try:
        with pytest.raises(WriterFailedError, match="locked"):
            run_pipeline(
                [TaskDef(i, f"t{i}") for i in range(1, 2001)],
                db,
                worker_fn=worker,
                workers=1,
                progress=False,
            )
        assert took_lock.is_set()
    finally:
        holder.close()
    assert integrity(db) == "ok"
