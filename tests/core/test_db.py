import sqlite3
from pathlib import Path

import pytest

from pipeloom import DatabaseError, SchemaOutdatedError
from pipeloom.db import connect, connect_readonly, init_schema, wal_checkpoint
from pipeloom.schema import PIPELOOM_TABLES, SCHEMA_VERSION, layout, schema_version


def test_connect_init_schema_and_checkpoint_on_a_new_file(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    conn = connect(db)
    init_schema(conn, db)
    init_schema(conn, db)  # idempotent
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert set(PIPELOOM_TABLES) <= tables
    assert schema_version(conn) == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    busy, _, _ = wal_checkpoint(conn)
    assert busy == 0
    conn.close()


def test_synchronous_full_is_selectable(tmp_path: Path) -> None:
    conn = connect(tmp_path / "full.db", synchronous="FULL")
    assert conn.execute("PRAGMA synchronous").fetchone() == (2,)
    conn.close()


def test_schema_lives_beside_user_tables(tmp_path: Path) -> None:
    db = tmp_path / "mine.db"
    with sqlite3.connect(db) as raw:
        raw.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
    conn = connect(db)
    init_schema(conn, db)
    assert conn.execute("SELECT count(*) FROM customers").fetchone() == (0,)
    conn.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "future.db"
    conn = connect(db)
    init_schema(conn, db)
    conn.execute(f"UPDATE pipeloom_schema SET version = {SCHEMA_VERSION + 1}")
    with pytest.raises(DatabaseError, match="newer than this pipeloom") as info:
        init_schema(conn, db)
    assert not isinstance(info.value, SchemaOutdatedError)
    conn.close()


def test_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="does not exist"):
        connect(tmp_path / "nowhere" / "x.db")


def test_readonly_never_creates_a_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    with pytest.raises(DatabaseError, match="no such database file"):
        connect_readonly(missing)
    assert not missing.exists()


def test_readonly_refuses_writes(tmp_path: Path) -> None:
    db = tmp_path / "ro.db"
    conn = connect(db)
    init_schema(conn, db)
    conn.close()
    ro = connect_readonly(db)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        ro.execute("DELETE FROM task_runs")
    ro.close()


def test_checkpoint_mode_is_validated(tmp_path: Path) -> None:
    conn = connect(tmp_path / "c.db")
    with pytest.raises(ValueError, match="TRUNCATE"):
        wal_checkpoint(conn, "SOMETIMES")
    conn.close()


def test_layout_tells_every_kind_of_file_apart(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "kinds.db", isolation_level=None)
    assert layout(conn) == "empty"
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
    assert layout(conn) == "foreign"
    conn.execute("PRAGMA user_version = 2")
    assert layout(conn) == "foreign"  # user_version is the application's, never pipeloom's
    init_schema(conn)
    assert layout(conn) == "current"
    conn.execute(f"UPDATE pipeloom_schema SET version = {SCHEMA_VERSION - 1}")
    assert layout(conn) == "outdated"
    conn.execute(f"UPDATE pipeloom_schema SET version = {SCHEMA_VERSION + 1}")
    assert layout(conn) == "newer"
    conn.execute("DROP TABLE task_runs")
    conn.execute("CREATE TABLE task_runs (id INTEGER PRIMARY KEY, owner TEXT)")
    conn.execute("DROP TABLE pipeloom_schema")
    assert layout(conn) == "conflict"
    conn.close()


def test_an_applications_user_version_is_neither_read_nor_overwritten(tmp_path: Path) -> None:
    db = tmp_path / "theirs.db"
    with sqlite3.connect(db) as raw:
        raw.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        raw.execute("PRAGMA user_version = 7")
    conn = connect(db)
    init_schema(conn, db)
    assert layout(conn) == "current"
    assert conn.execute("PRAGMA user_version").fetchone() == (7,)
    conn.close()
