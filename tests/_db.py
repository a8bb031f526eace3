"""Reading a test's database the way any user would: a plain connection, one query, closed."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

__all__ = ["query", "rows"]


def rows(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every row of ``sql`` on ``db`` (parameters as one tuple)."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def query(db: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """Every row of ``sql`` on ``db`` (parameters as arguments)."""
    return rows(db, sql, args)
