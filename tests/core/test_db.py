import sqlite3
from pathlib import Path

import pytest

from pipeloom import DatabaseError, SchemaOutdatedError
from pipeloom.db import connect, connect_readonly, init_schema, wal_checkpoint
from pipeloom.schema import PIPELOOM_TABLES, SCHEMA_VERSION, schema_version


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
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
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
