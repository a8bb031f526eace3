"""Other applications' files stay theirs: user_version, their tables, their columns."""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlite_utils import Database
from typer.testing import CliRunner

from pipeloom import DatabaseError, SchemaOutdatedError, TaskDef, TaskQueue, connect, run_pipeline
from pipeloom.db import init_schema
from pipeloom.schema import SCHEMA_VERSION, schema_version
from pipeloom_cli.app import app
from pipeloom_observe.migrations import migrations, upgrade
from tests._harness import query

runner = CliRunner()

ORIGINAL_TASK_RUNS = (
    "CREATE TABLE task_runs (id INTEGER PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, "
    "progress REAL NOT NULL DEFAULT 0.0, message TEXT, started_at TEXT, finished_at TEXT, "
    "result TEXT{extra})"
)
"""pipeloom 0.0.7's single-run table, with room for columns a user added."""

WAY_OUT = "another file, or pass store_task_status=False"


def _work(task: TaskDef, q: TaskQueue) -> None:
    """Nothing to do: the test is about the file, not the work."""


def _run(db: Path, **kwargs: object) -> None:
    run_pipeline(
        [TaskDef(1, "one"), TaskDef(2, "two")],
        db,
        worker_fn=_work,
        progress=False,
        handle_signals=False,
        **kwargs,  # type: ignore[arg-type]
    )


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _script(db: Path, *statements: str) -> None:
    conn = sqlite3.connect(db)
    try:
        for statement in statements:
            conn.execute(statement)
        conn.commit()
    finally:
        conn.close()


def _user_version(db: Path) -> int:
    return int(query(db, "PRAGMA user_version")[0][0])


def _table(db: Path, name: str) -> tuple[object, ...]:
    """A table as a user sees it: its DDL and every row."""
    sql = query(db, "SELECT sql FROM sqlite_master WHERE name = ?", name)
    return (sql, query(db, f"SELECT * FROM {name} ORDER BY rowid"))


def test_a_run_leaves_the_applications_user_version_alone(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    _script(db, "CREATE TABLE customers (id INTEGER PRIMARY KEY)", "PRAGMA user_version = 1")

    _run(db)
    assert _user_version(db) == 1
    _run(db)  # a file pipeloom has written to is read by its tables, not by user_version
    assert _user_version(db) == 1
    assert query(db, "SELECT count(*) FROM pipeline_runs") == [(2,)]

    result = runner.invoke(app, ["db", "upgrade", str(db)])  # records m001..m00N only
    assert result.exit_code == 0, result.output
    assert _user_version(db) == 1


def test_the_cli_upgrading_an_applications_file_leaves_user_version_alone(tmp_path: Path) -> None:
    """`pipeloom run` and `demo` upgrade a file first; the migrations must not stamp it."""
    db = tmp_path / "app.db"
    _script(db, "CREATE TABLE customers (id INTEGER PRIMARY KEY)", "PRAGMA user_version = 1")
    result = runner.invoke(app, ["demo", "--db", str(db), "-n", "2", "--delay", "0"])
    assert result.exit_code == 0, result.output
    assert _user_version(db) == 1
    assert query(db, "SELECT version FROM pipeloom_schema") == [(SCHEMA_VERSION,)]


def test_a_file_stamped_2_by_earlier_pipeloom_upgrades_in_place(tmp_path: Path) -> None:
    db = tmp_path / "v2.db"
    old = Database(db)
    migrations.apply(old, stop_before="m003_version_table_and_liveness")  # pipeloom <= 0.x
    old.conn.execute(
        "INSERT INTO pipeline_runs (name, status, started_at) VALUES ('old', 'done', 'then')"
    )
    old.conn.commit()
    old.conn.close()
    assert _user_version(db) == 2

    conn = connect(db)
    with pytest.raises(SchemaOutdatedError, match="version 2, current"):
        init_schema(conn, db)
    conn.close()

    assert upgrade(db) == [
        "m003_version_table_and_liveness",
        "m004_task_logs_and_runs_view",
        "m005_task_stages",
        "m006_stops_and_traceable_dead_letters",
        "m007_state_requests_and_cache",
    ]
    assert query(db, "SELECT version FROM pipeloom_schema") == [(SCHEMA_VERSION,)]
    assert _user_version(db) == 2  # pipeloom's old stamp stays: no value is reset
    _run(db)
    assert query(db, "SELECT name, status FROM pipeline_runs ORDER BY id") == [
        ("old", "done"),
        ("pipeline", "done"),
    ]


@dataclass(frozen=True)
class Foreign:
    """An application's table that happens to be called like one of pipeloom's."""

    ddl: str
    rows: tuple[str, ...]
    says: str


FOREIGN = {
    "task_runs_of_another_app": Foreign(
        "CREATE TABLE task_runs (id INTEGER PRIMARY KEY, owner TEXT, cost REAL)",
        (
            "INSERT INTO task_runs VALUES (1, 'ann', 2.5)",
            "INSERT INTO task_runs VALUES (2, 'bo', 1)",
        ),
        "table task_runs was not created by pipeloom (its columns: cost, id, owner",
    ),
    "original_layout_plus_user_columns": Foreign(
        ORIGINAL_TASK_RUNS.format(extra=", owner TEXT, cost REAL"),
        (
            "INSERT INTO task_runs VALUES "
            "(1, 'load', 'done', 1.0, '', NULL, NULL, 'ok', 'ann', 2.5)",
        ),
        "table task_runs has the original pipeloom layout plus columns pipeloom did not create "
        "(cost, owner)",
    ),
    "pipeline_runs_of_another_app": Foreign(
        "CREATE TABLE pipeline_runs (id INTEGER PRIMARY KEY, pipeline TEXT, ok INTEGER)",
        ("INSERT INTO pipeline_runs VALUES (1, 'nightly', 1)",),
        "table pipeline_runs was not created by pipeloom",
    ),
}


@pytest.mark.parametrize("case", FOREIGN.values(), ids=FOREIGN.keys())
def test_a_table_pipeloom_did_not_create_is_refused_by_name_and_never_changed(
    tmp_path: Path, case: Foreign
) -> None:
    db = tmp_path / "theirs.db"
    _script(db, case.ddl, *case.rows, "PRAGMA user_version = 4")
    table = "pipeline_runs" if "pipeline_runs" in case.ddl else "task_runs"
    before_file, before_table = _sha(db), _table(db, table)

    # `pipeloom db upgrade` refuses before any migration: not one byte changes.
    upgraded = runner.invoke(app, ["db", "upgrade", str(db)])
    assert upgraded.exit_code != 0
    assert case.says in upgraded.output and WAY_OUT in upgraded.output
    assert "Traceback" not in upgraded.output
    assert _sha(db) == before_file

    # The library refuses to record runs in it, with the same words.
    with pytest.raises(DatabaseError) as refused:
        _run(db)
    assert not isinstance(refused.value, SchemaOutdatedError)
    assert case.says in str(refused.value) and WAY_OUT in str(refused.value)
    assert _table(db, table) == before_table
    assert _user_version(db) == 4

    # Readers say so in one line instead of reading someone else's rows as runs.
    info = runner.invoke(app, ["db", "info", str(db)])
    assert info.exit_code == 0, info.output
    assert case.says in info.output
    status = runner.invoke(app, ["status", str(db)])
    assert status.exit_code == 2
    assert case.says in status.output

    # The way out the error names works: only the user's own handlers write.
    _run(db, store_task_status=False)
    assert _table(db, table) == before_table


def test_columns_a_user_added_to_pipelooms_tables_survive_the_upgrade(tmp_path: Path) -> None:
    db = tmp_path / "v2.db"
    old = Database(db)
    migrations.apply(old, stop_before="m003_version_table_and_liveness")
    old.conn.execute("ALTER TABLE task_runs ADD COLUMN reviewer TEXT")
    old.conn.execute(
        "INSERT INTO pipeline_runs (name, status, started_at) VALUES ('r', 'done', 't')"
    )
    old.conn.execute(
        "INSERT INTO task_runs (run_id, task_id, name, status, reviewer) "
        "VALUES (1, 1, 'load', 'done', 'ann')"
    )
    old.conn.commit()
    old.conn.close()

    upgrade(db)
    conn = sqlite3.connect(db)
    assert schema_version(conn) == SCHEMA_VERSION
    conn.close()
    assert query(db, "SELECT name, reviewer FROM task_runs") == [("load", "ann")]
    _run(db)
    assert query(db, "SELECT count(*) FROM task_runs WHERE reviewer = 'ann'") == [(1,)]
