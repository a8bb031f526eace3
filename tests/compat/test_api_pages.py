"""pipeloom 0.0.7's API pages (pipeloom.rlog, .db, .progress, .writer, .demo) as documented."""

from __future__ import annotations

import io
import queue
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console

import pipeloom
from pipeloom import TaskDef, TaskQueue, run_pipeline
from pipeloom.db import connect, init_schema, wal_checkpoint
from pipeloom.messages import SENTINEL, MsgTaskProgress, MsgTaskStarted
from pipeloom.progress import make_overall_progress, make_task_progress, preregister_task_bars
from pipeloom.writer import SQLiteWriter
from tests._harness import query


def test_rlog_is_the_logging_module_under_its_old_name() -> None:
    from pipeloom import rlog

    assert rlog.console is pipeloom.console
    assert rlog.setup_logging is pipeloom.setup_logging
    assert rlog.logger is pipeloom.logger


def test_init_schema_with_store_task_status(tmp_path: Path) -> None:
    conn = connect(tmp_path / "a.db", wal=True)
    init_schema(conn, store_task_status=False)
    assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []
    init_schema(conn, store_task_status=True)
    assert conn.execute("SELECT status, COUNT(*) FROM task_runs GROUP BY status").fetchall() == []
    init_schema(conn, tmp_path / "a.db")  # the newer positional form still works
    conn.close()


def test_init_db_as_0_0_7_cli_did_it(tmp_path: Path) -> None:
    db = tmp_path / "pipeloom.db"
    with connect(db, wal=True) as con:
        init_schema(con, store_task_status=True)
        wal_checkpoint(con, "FULL")
    con.close()
    assert ("task_runs",) in query(db, "SELECT name FROM sqlite_master WHERE type = 'table'")


def test_wal_checkpoint_commits_an_open_transaction_first(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    conn = connect(db_path=db, wal=True)
    conn.execute("CREATE TABLE t (x INTEGER)")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
    busy, _, _ = wal_checkpoint(conn, "TRUNCATE")
    assert busy == 0
    assert not conn.in_transaction
    conn.close()
    assert query(db, "SELECT COUNT(*) FROM t") == [(100,)]
    assert not (tmp_path / "c.db-wal").exists() or (tmp_path / "c.db-wal").stat().st_size == 0


def test_wal_checkpoint_on_a_plain_sqlite3_connection_mid_transaction(tmp_path: Path) -> None:
    # 0.0.7's example opened its own connections and checkpointed in a finally block.
    db = tmp_path / "p.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x INTEGER)")
    conn.execute("INSERT INTO t VALUES (1)")  # opens a transaction implicitly
    assert conn.in_transaction
    wal_checkpoint(conn, "TRUNCATE")
    conn.close()
    assert query(db, "SELECT x FROM t") == [(1,)]


def test_connect_enforces_foreign_keys(tmp_path: Path) -> None:
    conn = connect(tmp_path / "fk.db")
    assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
    conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    conn.execute(
        "CREATE TABLE child (id INTEGER PRIMARY KEY, "
        "parent_id INTEGER REFERENCES parent(id) ON DELETE CASCADE)"
    )
    conn.execute("INSERT INTO parent VALUES (1)")
    conn.execute("INSERT INTO child VALUES (10, 1)")
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        conn.execute("INSERT INTO child VALUES (11, 99)")
    conn.execute("DELETE FROM parent WHERE id = 1")
    assert conn.execute("SELECT COUNT(*) FROM child").fetchone() == (0,)
    conn.close()


@dataclass(frozen=True)
class MsgLine:
    order_id: int


def test_users_foreign_keys_hold_inside_a_pipeline(tmp_path: Path) -> None:
    # The writer's connection comes from connect(): a handler's insert that breaks the
    # user's own REFERENCES is refused (kept as a dead letter), not silently stored.
    def schema(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY)")
        conn.execute("CREATE TABLE IF NOT EXISTS lines (order_id REFERENCES orders(id))")
        conn.execute("INSERT OR IGNORE INTO orders VALUES (1)")

    def save(conn: sqlite3.Connection, msgs: list[MsgLine]) -> None:
        conn.executemany("INSERT INTO lines VALUES (?)", [(m.order_id,) for m in msgs])

    def worker(task: TaskDef, q: TaskQueue) -> None:
        q.put(MsgLine(task.task_id))

    db = tmp_path / "fk.db"
    run_pipeline(
        [TaskDef(1, "ok"), TaskDef(2, "orphan")],
        db,
        worker_fn=worker,
        schema=schema,
        handlers={MsgLine: save},
        workers=1,
        progress=False,
    )
    assert query(db, "SELECT order_id FROM lines") == [(1,)]
    (msg_type,) = query(db, "SELECT msg_type FROM dead_letters")[0]
    assert msg_type.endswith("MsgLine")


def test_preregistered_bars_follow_the_1_based_task_ids_to_the_last_task(tmp_path: Path) -> None:
    # 0.0.7's engine, by hand: bars pre-registered, then a writer fed from a plain queue.
    console = Console(file=io.StringIO(), width=80)
    overall_p = make_overall_progress(console)
    task_p = make_task_progress(console)
    n = 3
    bar_map = preregister_task_bars(task_p, n)
    assert sorted(bar_map) == [1, 2, 3]
    msg_q: queue.Queue[object] = queue.Queue()
    writer = SQLiteWriter(
        db_path=tmp_path / "bars.db",
        msg_q=msg_q,
        wal=True,
        store_task_status=True,
        task_progress=task_p,
        task_bar_map=bar_map,
    )
    writer.start()
    for task_id in range(1, n + 1):
        msg_q.put(MsgTaskStarted(task_id, f"task-{task_id}", "2024-01-01T00:00:00+00:00"))
        msg_q.put(MsgTaskProgress(task_id, 2, 4, "half"))
    msg_q.put(SENTINEL)
    writer.join(timeout=30)
    assert not writer.is_alive()
    by_id = {t.id: t for t in task_p.tasks}
    assert all(by_id[bar].visible for bar in bar_map.values())
    # Every task's bar moved, the last task's too (0..n-1 keys left task n without one).
    assert [(by_id[bar_map[i]].completed, by_id[bar_map[i]].total) for i in (1, 2, 3)] == [
        (2, 4)
    ] * 3
    assert overall_p.tasks == []
    assert query(tmp_path / "bars.db", "SELECT task_id, step FROM task_runs ORDER BY 1") == [
        (1, 2),
        (2, 2),
        (3, 2),
    ]
