"""Schema 5 records stages: three columns on task_runs, added in place by m005."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlite_utils import Database

from pipeloom.schema import SCHEMA_VERSION, create_schema, schema_version
from pipeloom_observe.migrations import migrations


def _columns(conn: sqlite3.Connection) -> dict[str, str]:
    return {r[1]: r[2] for r in conn.execute("PRAGMA table_info(task_runs)")}


def test_m005_adds_the_stage_columns_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = Database(path)
    migrations.apply(db, stop_before="m005_task_stages")
    assert schema_version(db.conn) == 4
    db.conn.execute(
        "INSERT INTO pipeline_runs (name, status, started_at) VALUES ('a', 'done', 't')"
    )
    db.conn.execute(
        "INSERT INTO task_runs (run_id, task_id, name, status) VALUES (1, 1, 'x', 'done')"
    )
    db.conn.commit()

    migrations.apply(db)
    assert schema_version(db.conn) == SCHEMA_VERSION
    columns = _columns(db.conn)
    assert {k: columns[k] for k in ("stage", "upstream_stage", "upstream_task_id")} == {
        "stage": "TEXT",
        "upstream_stage": "TEXT",
        "upstream_task_id": "INTEGER",
    }
    assert db.conn.execute("SELECT name, stage FROM task_runs").fetchall() == [("x", None)]
    migrations.apply(db)  # idempotent
    db.conn.close()

    fresh = sqlite3.connect(tmp_path / "new.db")
    create_schema(fresh)
    assert _columns(fresh) == columns  # core creates what the migrations produce
    fresh.close()
