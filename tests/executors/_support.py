"""Helpers the executor tests share."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path


def pipeloom_children() -> list[object]:
    """Worker processes pipeloom started and that are still alive (a Dask cluster's are not)."""
    return [c for c in multiprocessing.active_children() if c.name == "pipeloom-process"]


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    """Run one read query on a fresh connection."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()
