from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlite_utils import Database

from pipeloom import TaskDef, connect, init_schema, run_pipeline
from pipeloom.errors import DatabaseError
from pipeloom.schema import SCHEMA_VERSION, create_schema, schema_version
from pipeloom_observe.migrations import applied, migrations, pending, upgrade
from tests.observe._observe_support import (
    make_seed_db,
    normalised_schema,
    schema_of,
    sha256,
)

ALL = [m.name for m in migrations.pending(Database(memory=True))]


def core_schema() -> dict[str, object]:
    """Tables, columns and indexes core creates (``user_version`` is the application's: 0)."""
    conn = sqlite3.connect(":memory:")
    create_schema(conn)
    return normalised_schema(conn)


def structure(conn: sqlite3.Connection) -> dict[str, object]:
    """The schema without ``user_version``: the bare migration set stamps it (m002, frozen)."""
    schema = normalised_schema(conn)
    schema.pop("user_version")
    return schema


def test_migrations_from_nothing_reach_cores_schema_in_memory() -> None:
    db = Database(memory=True)
    migrations.apply(db)
    expected = core_schema()
    expected.pop("user_version")
    assert structure(db.conn) == expected
    assert [m.name for m in migrations.applied(db)] == ALL
    assert schema_version(db.conn) == SCHEMA_VERSION


def test_migrations_on_an_empty_file_equal_what_core_creates(tmp_path: Path) -> None:
    migrated = tmp_path / "migrated.db"
    migrated.touch()
    assert upgrade(migrated) == ALL

    created = tmp_path / "created.db"
    conn = connect(created)
    init_schema(conn, created)
    conn.close()

    assert schema_of(migrated) == schema_of(created)
    assert schema_of(migrated)["user_version"] == 0  # upgrade() leaves it as it found it
    conn = sqlite3.connect(migrated)
    assert schema_version(conn) == SCHEMA_VERSION
    conn.close()


def test_the_seed_layout_upgrades_in_place_keeping_every_row(tmp_path: Path) -> None:
    path = tmp_path / "seed.db"
    written = make_seed_db(path, rows=100)

    assert pending(path) == ALL
    assert upgrade(path) == ALL

    conn = sqlite3.connect(path)
    rows = conn.execute(
        "SELECT task_id, name, status, progress, message, started_at, finished_at, result "
        "FROM task_runs ORDER BY task_id"
    ).fetchall()
    assert rows == written
    assert conn.execute("SELECT DISTINCT run_id FROM task_runs").fetchall() == [(1,)]
    run = conn.execute(
        "SELECT status, tasks_total, tasks_done, tasks_error, tasks_cancelled FROM pipeline_runs"
    ).fetchall()
    assert run == [("interrupted", 100, 20, 20, 20)]
    failed = conn.execute("SELECT error FROM task_runs WHERE task_id = 1").fetchone()
    assert failed == ("boom 1",)
    conn.close()
    assert schema_of(path) == core_schema()


def test_core_upgrades_the_seed_layout_itself_and_the_migrations_agree(tmp_path: Path) -> None:
    path = tmp_path / "seed.db"
    make_seed_db(path, rows=5)
    conn = connect(path)
    init_schema(conn, path)  # core upgrades a 0.0.7 file in place (pipeloom.record._legacy)
    conn.close()
    assert schema_of(path) == core_schema()

    upgrade(path)  # only records the migrations: the schema is already current
    assert pending(path) == []
    assert schema_of(path) == core_schema()
    result = run_pipeline(
        [TaskDef(1, "again")],
        path,
        worker_fn=lambda task, q: None,
        progress=False,
        handle_signals=False,
    )
    assert result.run_id == 2
    conn = sqlite3.connect(path)
    counts = conn.execute("SELECT run_id, COUNT(*) FROM task_runs GROUP BY run_id").fetchall()
    assert counts == [(1, 5), (2, 1)]
    conn.close()


def test_reapplying_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "seed.db"
    make_seed_db(path, rows=10)
    upgrade(path)
    before = sha256(path)

    assert upgrade(path) == []
    assert pending(path) == []
    assert sha256(path) == before


def test_a_file_core_created_is_recorded_and_left_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "core.db"
    run_pipeline(
        [TaskDef(i, f"t{i}") for i in range(3)],
        path,
        worker_fn=lambda task, q: None,
        progress=False,
        handle_signals=False,
    )
    schema_before = schema_of(path)
    conn = sqlite3.connect(path)
    rows_before = conn.execute("SELECT * FROM task_runs ORDER BY id").fetchall()
    sql_before = conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE name != '_sqlite_migrations' "
        "AND tbl_name != '_sqlite_migrations' ORDER BY name"
    ).fetchall()
    conn.close()

    assert upgrade(path) == ALL

    conn = sqlite3.connect(path)
    assert conn.execute("SELECT * FROM task_runs ORDER BY id").fetchall() == rows_before
    sql_after = conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE name != '_sqlite_migrations' "
        "AND tbl_name != '_sqlite_migrations' ORDER BY name"
    ).fetchall()
    conn.close()
    assert sql_after == sql_before
    assert schema_of(path) == schema_before
    assert [name for name, _ in applied(path)] == ALL


def test_the_last_migration_records_cores_schema_version() -> None:
    db = Database(memory=True)
    migrations.apply(db, stop_before=ALL[-1])
    assert schema_version(db.conn) < SCHEMA_VERSION
    migrations.apply(db)
    assert schema_version(db.conn) == SCHEMA_VERSION


def test_a_missing_file_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    with pytest.raises(DatabaseError, match="no such database file"):
        upgrade(path)
    with pytest.raises(DatabaseError, match="no such database file"):
        pending(path)
    assert not path.exists()


def test_a_file_that_is_not_sqlite_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("this is a text file, not a database\n" * 20)
    with pytest.raises(DatabaseError, match="is not a SQLite database"):
        upgrade(path)
    assert path.read_text().startswith("this is a text file")


def test_a_file_from_a_newer_pipeloom_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    create_schema(conn)
    conn.execute(f"UPDATE pipeloom_schema SET version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(DatabaseError, match="newer than this pipeloom"):
        upgrade(path)


def test_pending_and_applied_never_write(tmp_path: Path) -> None:
    path = tmp_path / "seed.db"
    make_seed_db(path, rows=3)
    before = sha256(path)
    assert pending(path) == ALL
    assert applied(path) == []
    assert sha256(path) == before


def test_upgrade_waits_for_another_writer_instead_of_failing(tmp_path: Path) -> None:
    path = tmp_path / "seed.db"
    make_seed_db(path, rows=10)
    other = sqlite3.connect(path, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("UPDATE task_runs SET message = 'touched' WHERE id = 2")
    release = threading.Timer(0.3, other.commit)
    release.start()
    try:
        assert upgrade(path) == ALL
    finally:
        release.join()
        other.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT message FROM task_runs WHERE task_id = 2").fetchone() == (
        "touched",
    )
    conn.close()


def test_a_failed_upgrade_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "seed.db"
    make_seed_db(path, rows=10)
    conn = sqlite3.connect(path)
    # A leftover _task_runs_v1 makes m002 fail after m001 succeeded and after m002 created
    # pipeline_runs: all of it must be rolled back.
    conn.execute("CREATE TABLE _task_runs_v1 (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    before = schema_of(path)
    with pytest.raises(DatabaseError, match="nothing was changed"):
        upgrade(path)
    assert schema_of(path) == before
    assert pending(path) == ALL


def test_a_stray_table_named_like_pipelooms_is_refused_before_any_migration(
    tmp_path: Path,
) -> None:
    path = tmp_path / "seed.db"
    make_seed_db(path, rows=10)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE pipeline_runs (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    conn.commit()
    conn.close()
    before = sha256(path)
    with pytest.raises(DatabaseError, match="table pipeline_runs was not created by pipeloom"):
        upgrade(path)
    assert sha256(path) == before


seed_rows = st.lists(
    st.tuples(
        st.text(min_size=1, max_size=20),
        st.sampled_from(["queued", "running", "done", "error", "cancelled", "weird-status"]),
        st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
        st.none() | st.text(max_size=30),
        st.none() | st.text(max_size=30),
        st.none() | st.text(max_size=30),
        st.none() | st.text(max_size=30),
    ),
    max_size=30,
)


@settings(max_examples=40, deadline=None)
@given(rows=seed_rows, first_id=st.integers(min_value=0, max_value=10**6))
def test_any_seed_content_survives_the_upgrade(
    rows: list[tuple[object, ...]], first_id: int
) -> None:
    db = Database(memory=True)
    migrations.apply(db, stop_before=ALL[1])
    written = [(first_id + 7 * i, *row) for i, row in enumerate(rows)]
    db.conn.executemany("INSERT INTO task_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)", written)
    db.conn.commit()

    migrations.apply(db)

    kept = db.execute(
        "SELECT task_id, name, status, progress, message, started_at, finished_at, result "
        "FROM task_runs ORDER BY task_id"
    ).fetchall()
    assert kept == written
    runs = db.execute("SELECT COUNT(*), COALESCE(SUM(tasks_total), 0) FROM pipeline_runs")
    assert runs.fetchone() == ((1 if rows else 0), len(rows))
    expected = core_schema()
    expected.pop("user_version")
    assert structure(db.conn) == expected


def test_the_migrated_runs_view_reads_like_cores_runs_select(tmp_path: Path) -> None:
    from pipeloom.schema import RUNS_SELECT

    db = tmp_path / "runs.db"
    db.touch()
    upgrade(db)
    conn = sqlite3.connect(db)
    conn.executemany(
        "INSERT INTO pipeline_runs (name, status, started_at, finished_at, tasks_total, "
        "tasks_done, tasks_error, tasks_finished, heartbeat_at, lease_s) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                "a",
                "done",
                "2026-01-01T00:00:00+00:00",
                "2026-01-01T00:00:10+00:00",
                4,
                3,
                1,
                4,
                None,
                None,
            ),
            (
                "b",
                "running",
                "2026-01-01T00:00:00+00:00",
                None,
                10,
                2,
                0,
                2,
                "2026-01-01T00:00:01+00:00",
                30.0,
            ),
            ("c", "running", "2026-01-01T00:00:00+00:00", None, 0, 0, 0, 0, None, None),
        ],
    )
    conn.commit()
    view = conn.execute("SELECT * FROM runs ORDER BY id").fetchall()
    same = conn.execute(f"SELECT * FROM ({RUNS_SELECT}) ORDER BY id").fetchall()
    # duration_s and tasks_per_s of a running run follow 'now', which moves between queries.
    assert [row[:5] + row[6:10] + row[11:] for row in view] == [
        row[:5] + row[6:10] + row[11:] for row in same
    ]
    assert view[0][5:16] == (10.0, 4, 3, 1, 1.0, 0.4, 0, 0, None, None, "done")
    assert view[1][9] == 0.2 and view[1][11] == 1  # b: a fifth done; its lease ran out long ago
    # b is stale: shown so, and its time ends at its last heartbeat, not at "now"
    assert view[1][5] == 1.0 and view[1][15] == "stale"
    assert view[2][9] is None and view[2][11] == 0  # c: nothing planned yet, no lease
    conn.close()


def test_an_applications_own_runs_table_keeps_its_name(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, athlete TEXT, km REAL)")
    conn.execute("INSERT INTO runs (athlete, km) VALUES ('ann', 5.0)")
    conn.commit()
    conn.close()
    upgrade(db)
    created = tmp_path / "created.db"
    conn = sqlite3.connect(created)
    conn.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, athlete TEXT, km REAL)")
    create_schema(conn)
    conn.commit()
    assert conn.execute("SELECT type FROM sqlite_master WHERE name = 'runs'").fetchall() == [
        ("table",)
    ]
    conn.close()
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT athlete, km FROM runs").fetchall() == [("ann", 5.0)]
    assert schema_version(conn) == SCHEMA_VERSION
    conn.close()
