"""Cached work across runs: is a done task of an earlier run the same as this one?

A task with ``cache=True`` is looked up on the driver as it is made
(`pipeloom.pipeline._tasks.Flow`):
a done task of any earlier run of this pipeline, in this file, with the same key and the same
fingerprint (its input, or ``cache_key``'s value, with ``cache_version``), finished within
``cache_ttl``. On a hit it is not run: the worker records it ``done`` with the earlier result
and a `MsgCacheNote` that says where the result came from (``task_runs.cached_from_run`` and
``cached_from_task``), and its result goes downstream. A task that runs records its
fingerprint the same way, so the next run can find it. ``refresh=True`` skips the lookups.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeloom import fingerprint
from pipeloom._text import exc_summary, storable
from pipeloom.db import MEMORY, connect_readonly
from pipeloom.messages import parse_utc

if TYPE_CHECKING:
    from pipeloom.pipeline import Task

__all__ = ["Cache", "CacheHit", "MsgCacheNote", "apply_cache_notes", "fingerprint_of"]

log = logging.getLogger("pipeloom.pipeline")


@dataclass(frozen=True, slots=True)
class MsgCacheNote:
    """A cached task's fingerprint and, for a hit, the task its result came from."""

    task_id: int
    fingerprint: str
    cached_from_run: int | None = None
    cached_from_task: int | None = None


@dataclass(frozen=True, slots=True)
class CacheHit:
    """The earlier done task a cached task takes its result from."""

    run_id: int
    task_id: int
    result: str | None
    """Its stored result text, recorded again on this run's row."""
    value: Any
    """The result as a value, for the stages that consume it."""


def fingerprint_of(task: Task[Any, Any], item: Any) -> str:
    """The fingerprint of ``task`` on ``item``: ``cache_key(item)`` or the item, with the version.

    Raises:
        Exception: whatever ``cache_key`` raises (the caller logs it and runs the task).
    """
    basis = task.cache_key(item) if task.cache_key is not None else item
    return fingerprint.of([task.cache_version, basis])


def apply_cache_notes(conn: sqlite3.Connection, msgs: list[MsgCacheNote]) -> None:
    """The writer's handler for `MsgCacheNote`: note fingerprints on this run's task rows."""
    row = conn.execute("SELECT id FROM temp.pipeloom_run").fetchone()
    if row is None:
        return
    conn.executemany(
        "UPDATE task_runs SET fingerprint = ?, cached_from_run = ?, cached_from_task = ? "
        "WHERE run_id = ? AND task_id = ?",
        [(m.fingerprint, m.cached_from_run, m.cached_from_task, row[0], m.task_id) for m in msgs],
    )


class Cache:
    """Read-only lookups of earlier done tasks, on one connection (the flow's lock serialises)."""

    def __init__(self, pipeline: str, conn: sqlite3.Connection | None) -> None:
        self.pipeline = storable(pipeline)
        self.conn = conn
        self.hits = 0
        self.misses = 0
        self.lookup = True
        """False with ``refresh``: fingerprints are computed and recorded, never looked up."""

    @classmethod
    def open(cls, db: str | Path, pipeline: str) -> Cache:
        """Open the run database for lookups (nothing to find in a new or in-memory file)."""
        if str(db) == MEMORY or not Path(db).is_file():
            return cls(pipeline, None)
        conn = connect_readonly(db, check_same_thread=False)
        has = conn.execute(
            "SELECT 1 FROM pragma_table_info('task_runs') WHERE name = 'fingerprint'"
        ).fetchone()
        if has is None:  # an older schema: the writer will say so
            conn.close()
            return cls(pipeline, None)
        return cls(pipeline, conn)

    def close(self) -> None:
        """Close the connection, if one was opened."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def decide(
        self, task: Task[Any, Any], key: str, item: Any, *, readable: bool
    ) -> tuple[str | None, CacheHit | None]:
        """The task's fingerprint, and the earlier task it may take its result from.

        Args:
            task: the task (its ``cache_*`` settings).
            key: its key in this run.
            item: its item or the upstream result it consumes.
            readable: its result must be read back as a value (other stages consume it).
        """
        try:
            fp = fingerprint_of(task, item)
        except Exception as exc:
            log.warning("cache: %s: cache_key raised %s; running it", key, exc_summary(exc))
            return None, None
        if not self.lookup or self.conn is None:
            return fp, None
        hit = self._find(key, fp, task.cache_ttl, readable)
        if hit is None:
            self.misses += 1
        else:
            self.hits += 1
        return fp, hit

    def _find(self, key: str, fp: str, ttl: float | None, readable: bool) -> CacheHit | None:
        assert self.conn is not None
        try:
            row = self.conn.execute(
                "SELECT t.result, coalesce(t.cached_from_run, t.run_id), "
                "coalesce(t.cached_from_task, t.task_id) FROM task_runs t "
                "JOIN pipeline_runs r ON r.id = t.run_id WHERE t.task_key = ? AND "
                "t.fingerprint = ? AND t.status = 'done' AND r.name = ? "
                "ORDER BY t.id DESC LIMIT 1",
                (storable(key), fp, self.pipeline),
            ).fetchone()
            if row is None:
                return None
            result, origin_run, origin_task = row
            if ttl is not None and not self._fresh(origin_run, origin_task, ttl):
                return None
        except sqlite3.Error as exc:
            log.warning("cache: cannot look up %r (%s); running it", key, exc)
            return None
        value = None
        if readable and result is not None:
            try:
                value = json.loads(result)
            except ValueError:
                return None  # stored as repr or cut: it cannot be handed downstream
        return CacheHit(int(origin_run), int(origin_task), result, value)

    def _fresh(self, run_id: int, task_id: int, ttl: float) -> bool:
        assert self.conn is not None
        row = self.conn.execute(
            "SELECT finished_at FROM task_runs WHERE run_id = ? AND task_id = ?",
            (run_id, task_id),
        ).fetchone()
        finished = parse_utc(row[0]) if row is not None else None
        if finished is None:
            return False
        return (dt.datetime.now(dt.UTC) - finished).total_seconds() <= ttl
