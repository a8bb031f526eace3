"""A file written by pipeloom 0.0.7 is upgraded in place by core itself, its rows kept."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from pipeloom import DatabaseError, TaskDef, run_pipeline
from pipeloom.db import connect, init_schema
from pipeloom.demo import DemoTask, demo_worker
from pipeloom.record._legacy import IMPORTED_RUN_NAME, is_original_layout, upgrade_original_layout
from tests._harness import query

ORIGINAL_DDL = """
    CREATE TABLE IF NOT EXISTS task_runs (
      id INTEGER PRIMARY KEY,
      name TEXT NOT NULL,
      status TEXT NOT NULL,          -- queued|running|done|error|cancelled
      progress REAL NOT NULL DEFAULT 0.0,  -- fraction 0..1
      message TEXT,
      started_at TEXT,
      finished_at TEXT,
      result TEXT
    );
    CREATE INDEX IF NOT EXISTS idx_task_runs_status ON task_runs(status);
"""


def original_file(path: Path, task_rows: Sequence[tuple[object, ...]]) -> Path:
    """A file as 0.0.7's writer left it: its task_runs, plus a table of the user's."""
    conn = sqlite3.connect(path)
    conn.executescript(ORIGINAL_DDL)
    conn.execute("CREATE TABLE posts (id INTEGER PRIMARY KEY, title TEXT)")
    conn.execute("INSERT INTO posts VALUES (1, 'kept')")
    conn.executemany(
        "INSERT INTO task_runs (id, name, status, progress, message, started_at, finished_at, "
        "result) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        task_rows,
    )
    conn.commit()
    conn.close()
    return path


OLD_ROWS = [
    (1, "task-1", "done", 1.0, "completed", "2025-01-01T10:00:00", "2025-01-01T10:00:02", "ok:1"),
    (2, "task-2", "error", 0.0, "boom", "2025-01-01T10:00:00", "2025-01-01T10:00:03", None),
    (3, "task-3", "running", 0.5, "step 10/20", "2025-01-01T10:00:01", None, None),
]


def test_a_run_on_an_original_file_upgrades_it_and_keeps_its_rows(tmp_path: Path) -> None:
    db = original_file(tmp_path / "wal_demo.db", OLD_ROWS)
    tasks = [DemoTask(task_id=i, name=f"task-{i}", steps=2, delay=0) for i in range(1, 3)]
    # 0.0.7's argument order runs unchanged; the typed signature is (tasks, db_path).
    result = run_pipeline(db, tasks, worker_fn=demo_worker, progress=False)  # type: ignore[arg-type]
    assert result.ok and result.run_id == 2
    assert query(
        db, "SELECT id, name, status, tasks_total, tasks_done, tasks_error FROM pipeline_runs"
    ) == [
        (1, IMPORTED_RUN_NAME, "error", 3, 1, 1),
        (2, "pipeline", "done", 2, 2, 0),
    ]
    assert query(
        db,
        "SELECT run_id, task_id, name, status, progress, message, finished_at IS NOT NULL, "
        "result, error FROM task_runs ORDER BY run_id, task_id",
    ) == [
        (1, 1, "task-1", "done", 1.0, "completed", 1, "ok:1", None),
        (1, 2, "task-2", "error", 0.0, "boom", 1, None, "boom"),
        (1, 3, "task-3", "interrupted", 0.5, "step 10/20", 1, None, None),
        (2, 1, "task-1", "done", 1.0, "completed", 1, "ok:task-1", None),
        (2, 2, "task-2", "done", 1.0, "completed", 1, "ok:task-2", None),
    ]
    assert query(db, "SELECT * FROM posts") == [(1, "kept")]


def test_the_upgraded_schema_is_the_one_core_creates(tmp_path: Path) -> None:
    def schema_of(path: Path) -> list[tuple[str, str]]:
        return query(
            path,
            "SELECT name, sql FROM sqlite_master WHERE name NOT IN ('posts') "
            "AND sql IS NOT NULL ORDER BY name",
        )

    fresh = tmp_path / "fresh.db"
    conn = connect(fresh)
    init_schema(conn, fresh)
    conn.close()
    old = original_file(tmp_path / "old.db", OLD_ROWS)
    conn = connect(old)
    init_schema(conn, old)
    assert not is_original_layout(conn)
    conn.close()
    assert schema_of(old) == schema_of(fresh)
    assert query(old, "PRAGMA user_version") == query(fresh, "PRAGMA user_version")


def test_an_empty_original_table_upgrades_without_a_run(tmp_path: Path) -> None:
    db = original_file(tmp_path / "empty.db", [])
    conn = connect(db)
    assert is_original_layout(conn)
    assert upgrade_original_layout(conn, str(db)) is None
    assert upgrade_original_layout(conn, str(db)) is None  # already upgraded: nothing to do
    conn.close()
    assert query(db, "SELECT COUNT(*) FROM pipeline_runs") == [(0,)]
    assert query(db, "SELECT name FROM sqlite_master WHERE name LIKE '%0_0_7%'") == []


def test_a_table_of_the_users_named_task_runs_is_not_taken_for_the_original(
    tmp_path: Path,
) -> None:
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE task_runs (ticket TEXT, owner TEXT)")
    conn.commit()
    conn.close()
    conn = connect(db)
    assert not is_original_layout(conn)
    conn.close()


def test_a_failed_upgrade_changes_nothing(tmp_path: Path) -> None:
    db = original_file(tmp_path / "locked.db", OLD_ROWS)
    before = query(db, "SELECT * FROM task_runs ORDER BY id")
    conn = connect(db)
    # A view on the old table makes the rename fail half-way through the upgrade.
    conn.execute("CREATE VIEW broken AS SELECT nope FROM task_runs")
    with pytest.raises(sqlite3.Error):
        upgrade_original_layout(conn, str(db))
    assert not conn.in_transaction
    conn.close()
    assert query(db, "SELECT * FROM task_runs ORDER BY id") == before
    assert query(db, "SELECT name FROM sqlite_master WHERE name = 'pipeline_runs'") == []


def test_the_cli_upgrade_after_core_only_records_its_migrations(tmp_path: Path) -> None:
    from pipeloom_observe.migrations import pending, upgrade

    db = original_file(tmp_path / "both.db", OLD_ROWS)
    run_pipeline([TaskDef(1, "new")], db, worker_fn=demo_worker, progress=False)
    before = query(db, "SELECT run_id, task_id, status FROM task_runs ORDER BY 1, 2")
    schema = query(
        db, "SELECT name, sql FROM sqlite_master WHERE sql NOT LIKE '%_sqlite_migrations%'"
    )
    assert upgrade(db)  # records the migrations as applied
    assert pending(db) == []
    assert query(db, "SELECT run_id, task_id, status FROM task_runs ORDER BY 1, 2") == before
    after = query(
        db, "SELECT name, sql FROM sqlite_master WHERE sql NOT LIKE '%_sqlite_migrations%'"
    )
    assert after == schema


def test_an_original_table_with_columns_of_the_users_is_refused_untouched(
    tmp_path: Path,
) -> None:
    db = original_file(tmp_path / "extended.db", OLD_ROWS)
    conn = sqlite3.connect(db)
    conn.execute("ALTER TABLE task_runs ADD COLUMN owner TEXT")
    conn.commit()
    conn.close()
    before = query(db, "SELECT * FROM task_runs ORDER BY id")
    with pytest.raises(DatabaseError, match="owner"):
        run_pipeline([TaskDef(1, "t")], db, worker_fn=demo_worker, progress=False)
    assert query(db, "SELECT * FROM task_runs ORDER BY id") == before
