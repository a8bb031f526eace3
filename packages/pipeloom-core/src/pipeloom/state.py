"""A pipeline's incremental state: small JSON values that commit with the task that sets them.

"Load what is new since last time" needs a cursor. Kept in a side table it drifts from what
was loaded when a run dies between the load and the cursor update. Here the cursor rides the
task: ``ctx.state.set("cursor", 42)`` is held like any atomic output of the attempt and the
writer applies it with the attempt's domain rows and its ``done`` row, in one savepoint
(`MsgStateSet`, applied by `apply_state_sets`). A failed, timed-out or killed attempt leaves
the stored value as it was. ``ctx.state.get`` reads the values committed before the run began,
so every task of a run sees the same snapshot.

Values live in ``pipeloom_state`` (one row per pipeline and key, with the run and task that
last set it). One key is set by at most one task per run: a second task setting it fails,
its outputs dead-lettered, so two tasks never race to move one cursor.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pipeloom._text import printable, storable
from pipeloom.db import MEMORY, connect_readonly
from pipeloom.errors import PipelineError
from pipeloom.messages import utc_now

__all__ = [
    "KEY_MAX_CHARS",
    "VALUE_MAX_CHARS",
    "MsgStateSet",
    "StateConflictError",
    "StateEntry",
    "TaskState",
    "apply_state_sets",
    "read_state",
    "state_entries",
]

log = logging.getLogger("pipeloom.state")

KEY_MAX_CHARS: Final = 200
"""Longest state key: keys are names (``"cursor"``, ``"orders.last_id"``), not data."""

VALUE_MAX_CHARS: Final = 1_000_000
"""Longest JSON text of one value: state is a cursor or a watermark, not a data set."""


class StateConflictError(RuntimeError):
    """A second task of one run set a state key another task of that run already set."""


@dataclass(frozen=True, slots=True)
class MsgStateSet:
    """``ctx.state.set(key, value)``: held with the attempt's outputs, applied with its done row."""

    pipeline: str
    """The pipeline whose state this is (``pipeline_runs.name``)."""
    key: str
    """The state key."""
    value: str
    """The value as JSON text."""
    task_id: int
    """The task that set it, within its run."""
    task_key: str | None
    """The task's stable key, so ``status --state`` can name it."""


class TaskState:
    """``ctx.state``: read the values committed before the run, set values that commit with it.

    Args:
        pipeline: the pipeline's name.
        snapshot: key -> JSON text, as committed when the run began.
        hold: adds a message to the attempt's held outputs.
        task_id: the task within its run.
        task_key: its stable key.
    """

    __slots__ = ("_hold", "_pending", "_pipeline", "_snapshot", "_task_id", "_task_key")

    def __init__(
        self,
        pipeline: str,
        snapshot: Mapping[str, str],
        hold: Callable[[Any], None],
        task_id: int,
        task_key: str | None,
    ) -> None:
        """Bind the state to one attempt (see the class)."""
        # Stored as the run row stores its name: text SQLite can hold (no lone surrogates).
        self._pipeline = storable(pipeline)
        self._snapshot = snapshot
        self._hold = hold
        self._task_id = task_id
        self._task_key = task_key
        self._pending: dict[str, str] = {}

    def get(self, key: str, default: Any = None) -> Any:
        """Return the value of ``key`` committed before this run began, else ``default``.

        A value this attempt set is not returned: it is not committed until the task is done.
        """
        text = self._snapshot.get(storable(key)) if isinstance(key, str) else None
        if text is None:
            return default
        return json.loads(text)

    def set(self, key: str, value: Any) -> None:
        """Set ``key`` to ``value`` when, and only when, this attempt commits as done.

        Setting a key twice in one attempt keeps the last value.

        Raises:
            TypeError: ``key`` is not a short non-empty string, or ``value`` is not JSON
                (dicts, lists, strings, finite numbers, booleans, None).
        """
        if not isinstance(key, str) or not key or len(key) > KEY_MAX_CHARS:
            raise TypeError(
                f"ctx.state.set({key!r}, ...): a key is a non-empty string of at most "
                f"{KEY_MAX_CHARS} characters, e.g. 'cursor'"
            )
        try:
            text = json.dumps(value, allow_nan=False, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"ctx.state.set({key!r}, {type(value).__name__}): state values are JSON "
                f"({exc}); store str(value) or value.isoformat() instead"
            ) from None
        if len(text) > VALUE_MAX_CHARS:
            raise TypeError(
                f"ctx.state.set({key!r}, ...): {len(text)} characters of JSON, more than "
                f"{VALUE_MAX_CHARS}; state holds cursors and watermarks, keep data in tables"
            )
        key = storable(key)
        self._pending[key] = text
        self._hold(MsgStateSet(self._pipeline, key, text, self._task_id, self._task_key))

    def __repr__(self) -> str:
        """List the keys, which is what a debugging user wants first."""
        return f"TaskState(keys={sorted(self._snapshot)}, pending={sorted(self._pending)})"


def apply_state_sets(conn: sqlite3.Connection, msgs: list[MsgStateSet]) -> None:
    """The writer's handler for `MsgStateSet`: upsert each value inside the task's savepoint.

    It runs in the writer's transaction, in the savepoint of the task's done row, so the value
    commits with the task's rows or not at all.

    Raises:
        StateConflictError: another task of this run already set the key; the writer then
            records this task ``error`` and dead-letters its outputs.
    """
    row = conn.execute("SELECT id FROM temp.pipeloom_run").fetchone()
    run_id = row[0] if row is not None else None
    for msg in msgs:
        found = conn.execute(
            "SELECT run_id, task_id, task_key FROM pipeloom_state WHERE pipeline = ? AND key = ?",
            (msg.pipeline, msg.key),
        ).fetchone()
        taken = found is not None and run_id is not None and found[0] == run_id
        if taken and found[1] != msg.task_id:
            raise StateConflictError(
                f"state key {msg.key!r} was already set in run {run_id} by task "
                f"{found[2] or found[1]}; one task sets a key per run, so give each task "
                "a key of its own (e.g. f'cursor:{item}')"
            )
        conn.execute(
            "INSERT INTO pipeloom_state (pipeline, key, value, run_id, task_id, task_key, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (pipeline, key) DO UPDATE SET "
            "value = excluded.value, run_id = excluded.run_id, task_id = excluded.task_id, "
            "task_key = excluded.task_key, updated_at = excluded.updated_at",
            (msg.pipeline, msg.key, msg.value, run_id, msg.task_id, msg.task_key, utc_now()),
        )


@dataclass(frozen=True, slots=True)
class StateEntry:
    """One stored state value and where it came from (for ``status --state``)."""

    pipeline: str
    key: str
    value: str
    """JSON text."""
    run_id: int | None
    task_id: int | None
    task_key: str | None
    updated_at: str


def state_entries(conn: sqlite3.Connection, pipeline: str | None = None) -> Iterator[StateEntry]:
    """Yield the stored state (of one pipeline, or all), ordered by pipeline and key.

    A file older than schema 7 has no state table: nothing is yielded.
    """
    has = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'pipeloom_state'"
    ).fetchone()
    if has is None:
        return
    sql = "SELECT pipeline, key, value, run_id, task_id, task_key, updated_at FROM pipeloom_state"
    args: tuple[Any, ...] = ()
    if pipeline is not None:
        sql += " WHERE pipeline = ?"
        args = (storable(pipeline),)
    for row in conn.execute(sql + " ORDER BY pipeline, key", args).fetchall():
        yield StateEntry(*row)


def read_state(db: str | Path, pipeline: str) -> dict[str, str]:
    """Read a pipeline's committed state (key -> JSON text) before its run starts.

    A missing file, an in-memory database or a file without the state table has none yet.

    Raises:
        PipelineError: the file exists but cannot be read.
    """
    if str(db) == MEMORY or not Path(db).is_file():
        return {}
    try:
        conn = connect_readonly(db)
    except Exception as exc:
        raise PipelineError(f"{db}: cannot read the pipeline's state ({exc})") from exc
    try:
        return {e.key: e.value for e in state_entries(conn, pipeline)}
    except sqlite3.Error as exc:
        raise PipelineError(
            f"{db}: cannot read the state of pipeline {printable(pipeline)!r} ({exc})"
        ) from exc
    finally:
        conn.close()
