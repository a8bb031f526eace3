"""Run history, read back: a file's runs, their tasks, attempts, logs and stages.

(The run rows themselves are written by the writer thread, in `pipeloom.record._runs`.)

`HistoryReader` opens a file read-only (safe beside a pipeline that is writing it,
and it never creates a file) and reads it one *document* at a time: each `snapshot` is one
read transaction, so everything read through it (a run's counts, its task rows, its stages)
is the file at one moment, however fast a live run commits. ``pipeloom status`` (each table,
JSON document and ``--watch`` frame) and resume read through it; so can a script::

    from pipeloom.history import HistoryReader
    from pipeloom.status import FAILED

    with HistoryReader("runs.db") as reader, reader.snapshot() as snap:
        run = snap.run()  # the latest run
        failed = [t for t in snap.tasks(run.id) if t.status in FAILED]

The functions underneath (`get_run`, `list_runs`, `run_tasks`, `get_task`, `find_task`,
`task_attempts`, `task_logs`, `stage_counts`, `live_runs`, `TaskChanges`) take a connection
from `open_history`; each reads in one transaction of its own unless the caller has one open.
Nothing here imports Rich; readers never write.
"""

from __future__ import annotations

import difflib
import json
import os
import shlex
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeloom._history_rows import AttemptInfo, DeadLetterInfo, LogInfo, RunInfo, TaskInfo
from pipeloom._text import printable, storable
from pipeloom.db import connect_readonly, describe_error
from pipeloom.errors import (
    HistoryError,
    RunNotFoundError,
    SchemaOutdatedError,
    TaskNotFoundError,
)
from pipeloom.lease import STALE_SQL, provable_owner, stale_sql
from pipeloom.record._fileid import pid_alive
from pipeloom.schema import SCHEMA_VERSION, inspect_schema
from pipeloom.status import (
    ACTIVE,
    FAILED,
    TERMINAL,
    sql_in,
)

__all__ = [
    "AttemptInfo",
    "DeadLetterInfo",
    "HistoryError",
    "HistoryReader",
    "LogInfo",
    "RunInfo",
    "RunNotFoundError",
    "Snapshot",
    "TaskChanges",
    "TaskInfo",
    "TaskNotFoundError",
    "done_in_run",
    "find_task",
    "get_run",
    "get_task",
    "list_runs",
    "live_runs",
    "one_read",
    "open_history",
    "run_tasks",
    "stage_counts",
    "task_attempts",
    "task_dead_letters",
    "task_logs",
]


def done_in_run(result: object) -> int | None:
    """The run a ``skipped`` row's work was done in: its result is ``{"done_in_run": N}``.

    Resume follows it to read an earlier result, observe to link it; None for any other row.
    """
    try:
        data = json.loads(str(result)) if result else None
    except ValueError:
        return None
    run = data.get("done_in_run") if isinstance(data, dict) else None
    return run if isinstance(run, int) else None


def open_history(db: str | Path, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """Open ``db`` read-only and check it holds run history this pipeloom can read.

    Safe beside a pipeline that is writing the file; never creates or changes it. Read a
    document that must agree with itself (a run and its tasks) through `HistoryReader`, or
    inside one transaction of your own.

    Args:
        db: the run database.
        check_same_thread: False lets another thread use the connection (resume's lookups).

    Raises:
        HistoryError: the file is missing, holds no pipeloom runs, or a newer schema.
        SchemaOutdatedError: it holds an older schema (``pipeloom db upgrade PATH``).
        DatabaseError: it is not a regular file, not SQLite, damaged or unreadable.
    """
    path = Path(db)
    if not os.path.lexists(path):
        raise HistoryError(f"{path}: no such database file")
    conn = connect_readonly(path, check_same_thread=check_same_thread)
    try:
        state = inspect_schema(conn)
    except sqlite3.DatabaseError as exc:  # a damaged schema page
        conn.close()
        raise describe_error(path, exc) from exc
    if state.layout == "current":
        return conn
    conn.close()
    if state.layout == "conflict":
        raise HistoryError(f"{path}: holds no pipeloom runs: {state.conflict}")
    if state.layout in ("empty", "foreign"):
        raise HistoryError(f"{path}: holds no pipeloom runs (no task_runs table); check the path")
    if state.layout == "newer":
        raise HistoryError(f"{path}: was written by a newer pipeloom; upgrade pipeloom to read it")
    raise SchemaOutdatedError(
        f"{path}: holds an older pipeloom schema (version {state.version}, current "
        f"{SCHEMA_VERSION}); run `pipeloom db upgrade {shlex.quote(str(path))}` first"
    )


@contextmanager
def one_read(conn: sqlite3.Connection) -> Iterator[None]:
    """Run the block in one read transaction, or in the caller's if one is open.

    A deferred ``BEGIN`` on a WAL reader: the first statement fixes the snapshot every later
    statement of the block reads, while the writer goes on committing. Without it each
    statement reads the file as it is at that statement, so a run's counts and its task rows,
    read one after the other, disagree by whatever committed in between (14,603 done in the
    counts, 14,733 in the rows of the same document). Ended at once: an open read stops
    checkpoints from recycling the WAL.
    """
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")  # nothing was written: it only ends the read


class Snapshot:
    """The file at one moment: what a `HistoryReader.snapshot` block reads through.

    Usable only inside its block; reading through it afterwards raises, so a document cannot
    mix rows from two moments.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        """Read through ``conn``, which the caller keeps in one read transaction."""
        self._conn: sqlite3.Connection | None = conn

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection, inside this snapshot's transaction.

        Raises:
            HistoryError: the snapshot's block has ended.
        """
        if self._conn is None:
            raise HistoryError(
                "this snapshot's block has ended; read inside `with reader.snapshot() as snap:`"
            )
        return self._conn

    def end(self) -> None:
        """Refuse every later read (its transaction is over)."""
        self._conn = None

    def run(self, run_id: int | None = None) -> RunInfo | None:
        """`get_run`: run ``run_id``, or the latest; None when the file has no runs."""
        return get_run(self.conn, run_id)

    def runs(self, limit: int = 20) -> list[RunInfo]:
        """`list_runs`: the most recent runs, newest first."""
        return list_runs(self.conn, limit)

    def tasks(
        self, run_id: int, limit: int | None = None, *, skipped: bool = True
    ) -> list[TaskInfo]:
        """`run_tasks`: a run's tasks, the most interesting first."""
        return run_tasks(self.conn, run_id, limit, skipped=skipped)

    def task(self, run_id: int, ref: int | str) -> TaskInfo:
        """`find_task`: one task of a run, by id or key."""
        return find_task(self.conn, run_id, ref)

    def attempts(self, run_id: int, task_id: int) -> list[AttemptInfo]:
        """`task_attempts`: a task's failed attempts before its last."""
        return task_attempts(self.conn, run_id, task_id)

    def dead_letters(self, run_id: int, task_id: int) -> tuple[list[DeadLetterInfo], int]:
        """A task's first dead letters and how many it has (`task_dead_letters`)."""
        return task_dead_letters(self.conn, run_id, task_id)

    def logs(self, run_id: int, task_id: int) -> list[LogInfo]:
        """`task_logs`: the log records stored for a task."""
        return task_logs(self.conn, run_id, task_id)

    def stages(self, run_id: int) -> dict[str, dict[str, int]]:
        """`stage_counts`: a run's task counts per stage and status."""
        return stage_counts(self.conn, run_id)

    def follow(self, run_id: int) -> TaskChanges:
        """Start following a run's changed rows from this moment (see `changed`)."""
        changes = TaskChanges(self.conn, run_id)
        changes.start()
        return changes

    def changed(self, changes: TaskChanges) -> list[TaskInfo]:
        """The rows of a followed run that changed between its last look and this moment."""
        if changes.conn is not self.conn:
            raise HistoryError("follow a run and read its changes through one HistoryReader")
        return changes.changed()


class HistoryReader:
    """A run database opened read-only, read one document at a time (see `snapshot`).

    Use it as a context manager, or call `close`.
    """

    def __init__(self, db: str | Path, *, check_same_thread: bool = True) -> None:
        """Open ``db`` with `open_history` (same checks, same errors).

        Raises:
            HistoryError: the file is missing, holds no pipeloom runs, or a newer schema.
            SchemaOutdatedError: it holds an older schema (``pipeloom db upgrade PATH``).
            DatabaseError: it is not a regular file, not SQLite, damaged or unreadable.
        """
        self.path = Path(db)
        self._conn = open_history(db, check_same_thread=check_same_thread)

    @contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        """One document: every read in the block sees the file at one moment.

        Raises:
            HistoryError: a snapshot is already open on this reader (they do not nest).
        """
        if self._conn.in_transaction:
            raise HistoryError(f"{self.path}: a snapshot is already open; snapshots do not nest")
        with one_read(self._conn):
            snap = Snapshot(self._conn)
            try:
                yield snap
            finally:
                snap.end()

    def close(self) -> None:
        """Close the file."""
        self._conn.close()

    def __enter__(self) -> HistoryReader:
        """Return the reader itself."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the file."""
        self.close()


_RUN_COLUMNS = (
    "id, name, status, started_at, finished_at, workers, tasks_total, messages, params, host, "
    f"pid, heartbeat_at, lease_s, {stale_sql()}, stop_reason, tasks_not_started, tasks_planned, "
    "note"
)


def _run_from_row(conn: sqlite3.Connection, row: tuple[Any, ...]) -> RunInfo:
    run_id, name, status, started, finished, workers, total, messages, params, host = row[:10]
    pid, heartbeat_at, lease_s, stale, stop_reason, not_started, planned, note = row[10:]
    # Per status from task_runs: the row's own counts group every failure under tasks_error.
    counts = {
        str(s): int(n)
        for s, n in conn.execute(
            "SELECT status, count(*) FROM task_runs WHERE run_id = ? GROUP BY status", (run_id,)
        )
    }
    try:
        parsed = json.loads(params) if params else None
    except ValueError:
        parsed = params
    return RunInfo(
        id=int(run_id),
        name=str(name),
        status=str(status),
        started_at=str(started),
        finished_at=finished,
        workers=workers,
        tasks_total=int(total or 0),
        counts=counts,
        messages=int(messages or 0),
        params=parsed,
        host=host,
        pid=pid,
        heartbeat_at=heartbeat_at,
        lease_s=lease_s,
        stale=bool(stale),
        stop_reason=stop_reason,
        not_started=not_started if status != "running" else 0,
        planned=planned,
        note=note or None,
    )


def get_run(conn: sqlite3.Connection, run_id: int | None = None) -> RunInfo | None:
    """Return run ``run_id`` (the latest when None); None when the file has no runs.

    Raises:
        RunNotFoundError: ``run_id`` is not in the file.
    """
    with one_read(conn):  # the row and its counts from one moment
        if run_id is None:
            row = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM pipeline_runs ORDER BY id DESC LIMIT 1"
            ).fetchone()
            return None if row is None else _run_from_row(conn, row)
        row = conn.execute(
            f"SELECT {_RUN_COLUMNS} FROM pipeline_runs WHERE id = ?", (run_id,)
        ).fetchone()
        if row is None:
            first, last = conn.execute("SELECT min(id), max(id) FROM pipeline_runs").fetchone()
            raise RunNotFoundError(run_id, first, last)
        return _run_from_row(conn, row)


def list_runs(conn: sqlite3.Connection, limit: int = 20) -> list[RunInfo]:
    """Return the most recent runs, newest first."""
    with one_read(conn):
        rows = conn.execute(
            f"SELECT {_RUN_COLUMNS} FROM pipeline_runs ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [_run_from_row(conn, row) for row in rows]


def live_runs(
    conn: sqlite3.Connection, *, name: str | None = None, run_id: int | None = None
) -> list[RunInfo]:
    """Return the runs whose writer is alive: ``running``, with a lease that has not expired.

    A run whose owner is provably this host, PID namespace and boot, and whose pid is gone,
    is not alive even within its lease (as `dead_runs` decides). A run written before leases
    existed (no heartbeat) is never alive here: no current writer leaves one. With ``name``
    and ``run_id``, only the runs of that pipeline name or with that id, oldest first.
    """
    where = f"status = 'running' AND heartbeat_at IS NOT NULL AND NOT {STALE_SQL}"
    params: list[Any] = []
    if name is not None or run_id is not None:
        where += " AND (name = ? OR id = ?)"
        params += [None if name is None else storable(name), run_id]
    with one_read(conn):
        found = conn.execute(
            f"SELECT id, pid, owner FROM pipeline_runs WHERE {where} ORDER BY id", params
        ).fetchall()
        alive = [
            int(found_id)
            for found_id, pid, owner in found
            if not (pid is not None and provable_owner(owner) and not pid_alive(int(pid)))
        ]
        runs = [get_run(conn, found_id) for found_id in alive]
    return [run for run in runs if run is not None]


_TASK_COLUMNS = (
    "task_id, name, status, progress, step, total, message, started_at, finished_at, attempt, "
    "result, error, task_key, "
    # A task still active in a stale run stopped at the run's last sign of life.
    f"CASE WHEN status IN {sql_in(ACTIVE)} THEN (SELECT r.heartbeat_at FROM pipeline_runs r "
    f"WHERE r.id = task_runs.run_id AND {stale_sql('r')}) END"
)

_INTEREST = (
    f"CASE WHEN status IN {sql_in(FAILED)} THEN 0 WHEN status IN {sql_in(ACTIVE)} THEN 1 "
    "WHEN status = 'done' THEN 2 WHEN status = 'skipped' THEN 4 ELSE 3 END"
)
"""Most interesting first: failed, running, done, did not run (cancelled, upstream failed),
then skipped (an earlier run's work, hundreds of rows in a resumed run)."""


def run_tasks(
    conn: sqlite3.Connection, run_id: int, limit: int | None = None, *, skipped: bool = True
) -> list[TaskInfo]:
    """Return a run's tasks, the most interesting first, then by task id.

    Failed tasks first, then running ones, then done ones, then those that did not run
    (cancelled, upstream failed), and ``skipped`` tasks last: in a resumed run, the dozen
    tasks that ran come before the hundreds an earlier run had done.

    Args:
        conn: from `open_history`.
        run_id: the run.
        limit: at most this many tasks.
        skipped: False leaves ``skipped`` tasks out (a table summarises them in one line).
    """
    where = "WHERE run_id = ?" + ("" if skipped else " AND status != 'skipped'")
    sql = f"SELECT {_TASK_COLUMNS} FROM task_runs {where} ORDER BY {_INTEREST}, task_id"
    params: tuple[Any, ...] = (run_id,)
    if limit is not None:
        sql += " LIMIT ?"
        params = (run_id, limit)
    return [TaskInfo(*row) for row in conn.execute(sql, params)]


def get_task(conn: sqlite3.Connection, run_id: int, task_id: int) -> TaskInfo:
    """Return task ``task_id`` of run ``run_id``.

    Raises:
        TaskNotFoundError: the run has no such task.
    """
    with one_read(conn):
        row = conn.execute(
            f"SELECT {_TASK_COLUMNS} FROM task_runs WHERE run_id = ? AND task_id = ?",
            (run_id, task_id),
        ).fetchone()
        if row is not None:
            return TaskInfo(*row)
        first, last = conn.execute(
            "SELECT min(task_id), max(task_id) FROM task_runs WHERE run_id = ?", (run_id,)
        ).fetchone()
    raise TaskNotFoundError(run_id, task_id, first, last)


def _as_id(ref: int | str) -> int | None:
    if isinstance(ref, int):
        return ref
    try:
        return int(ref.strip())
    except ValueError:
        return None


_CLOSE_MATCHES = 5
_NEIGHBOURS = 50
"""Keys on each side of a missing key, in sort order, offered to the close-match search."""
_CANDIDATES = 2000
"""At most this many keys share a missing key's last part (so a run of a million stays fast)."""


def find_task(conn: sqlite3.Connection, run_id: int, ref: int | str) -> TaskInfo:
    """Return a task of run ``run_id`` by id, key or name.

    Ids differ between runs; a key (``load:data/a.csv``) names the same work in every run.
    ``ref`` is tried as an id (when it is a number), then as a key, then as a name that only
    one task of the run has.

    Raises:
        TaskNotFoundError: no task matches; it names the keys closest to ``ref``.
        HistoryError: several tasks of the run have that name (it names their ids).
    """
    with one_read(conn):
        task_id = _as_id(ref)
        if task_id is not None:
            try:
                return get_task(conn, run_id, task_id)
            except TaskNotFoundError:
                if isinstance(ref, int):
                    raise  # an id, and no such task: the error names the run's ids
        text = storable(str(ref))  # the form the writer stored
        for column in ("task_key", "name"):
            rows = conn.execute(
                f"SELECT {_TASK_COLUMNS} FROM task_runs WHERE run_id = ? AND {column} = ? "
                "ORDER BY task_id LIMIT 6",
                (run_id, text),
            ).fetchall()
            if len(rows) == 1:
                return TaskInfo(*rows[0])
            if rows:
                ids = ", ".join(str(row[0]) for row in rows[:5]) + (
                    ", ..." if len(rows) > 5 else ""
                )
                raise HistoryError(
                    f"task {printable(text)!r} names several tasks of run {run_id} "
                    f"(ids {ids}); pass an id or a key"
                )
        first, last = conn.execute(
            "SELECT min(task_id), max(task_id) FROM task_runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        matches = _close_keys(conn, run_id, text)
    raise TaskNotFoundError(run_id, str(ref), first, last, matches)


def _close_keys(conn: sqlite3.Connection, run_id: int, text: str) -> list[str]:
    """The run's keys (or names) closest to ``text``, best first, without reading them all.

    Candidates: the keys next to it in sort order (a slip near the end), and those that
    contain its last part (``a.csv`` of ``lod:data/a.csv``: a slip near the start).
    """
    label = "coalesce(task_key, name)"
    last = text.replace("\\", "/").rsplit("/", 1)[-1].rsplit(":", 1)[-1] or text
    pool: set[str] = set()
    for sql, params in (
        (
            f"SELECT {label} FROM task_runs WHERE run_id = ? AND {label} >= ? "
            f"ORDER BY {label} LIMIT ?",
            (run_id, text, _NEIGHBOURS),
        ),
        (
            f"SELECT {label} FROM task_runs WHERE run_id = ? AND {label} < ? "
            f"ORDER BY {label} DESC LIMIT ?",
            (run_id, text, _NEIGHBOURS),
        ),
        (
            f"SELECT {label} FROM task_runs WHERE run_id = ? "
            f"AND instr(lower({label}), lower(?)) > 0 LIMIT ?",
            (run_id, last, _CANDIDATES),
        ),
    ):
        pool.update(str(row[0]) for row in conn.execute(sql, params))
    return difflib.get_close_matches(text, sorted(pool), n=_CLOSE_MATCHES, cutoff=0.6)


def task_attempts(conn: sqlite3.Connection, run_id: int, task_id: int) -> list[AttemptInfo]:
    """Return a task's recorded failed attempts (``task_attempts``), first attempt first.

    The attempt that ended the task is its ``task_runs`` row, not one of these.
    """
    rows = conn.execute(
        "SELECT attempt, status, started_at, finished_at, error, discarded FROM task_attempts "
        "WHERE run_id = ? AND task_id = ? ORDER BY attempt, id",
        (run_id, task_id),
    )
    return [AttemptInfo(*row) for row in rows]


def task_dead_letters(
    conn: sqlite3.Connection, run_id: int, task_id: int, limit: int = 200
) -> tuple[list[DeadLetterInfo], int]:
    """Return a task's first ``limit`` dead letters and how many it has in all.

    Found by their ``run_id`` and ``task_id`` columns (schema 6), never by their text.
    """
    rows = conn.execute(
        "SELECT id, attempt, created_at, msg_type, error, payload FROM dead_letters "
        "WHERE run_id = ? AND task_id = ? ORDER BY id LIMIT ?",
        (run_id, task_id, limit),
    ).fetchall()
    total = len(rows)
    if total == limit:
        (total,) = conn.execute(
            "SELECT count(*) FROM dead_letters WHERE run_id = ? AND task_id = ?",
            (run_id, task_id),
        ).fetchone()
    return [DeadLetterInfo(*row) for row in rows], int(total)


def task_logs(conn: sqlite3.Connection, run_id: int, task_id: int) -> list[LogInfo]:
    """Return the log records stored for a task, oldest first.

    A row with ``dropped`` above 0 counts the records dropped beyond the task's bound.
    """
    rows = conn.execute(
        "SELECT created_at, level, logger, message, attempt, dropped FROM task_logs "
        "WHERE run_id = ? AND task_id = ? ORDER BY created_at, id",
        (run_id, task_id),
    )
    return [LogInfo(*row) for row in rows]


def stage_counts(conn: sqlite3.Connection, run_id: int) -> dict[str, dict[str, int]]:
    """A run's task counts per stage and status, stages in the order their first task ran.

    Empty for a run without stages (a low-level ``run_pipeline``, which records none).
    """
    per_stage: dict[str, dict[str, int]] = {}
    first: dict[str, int] = {}
    sql = (
        "SELECT stage, status, count(*), min(task_id) FROM task_runs "
        "WHERE run_id = ? AND stage IS NOT NULL GROUP BY stage, status"
    )
    for stage, status, n, low in conn.execute(sql, (run_id,)):
        name = str(stage)
        per_stage.setdefault(name, {})[str(status)] = int(n)
        first[name] = min(first.get(name, low), low)
    return {name: per_stage[name] for name in sorted(per_stage, key=first.__getitem__)}


_IDS_PER_QUERY = 500
"""Row ids per ``IN (...)`` list: far below SQLite's limit on bound parameters."""


class TaskChanges:
    """Which of a run's task rows changed since the last look, without rereading them all.

    A row in a terminal status never changes again (one terminal row per task), so each look
    reads only the rows added since (by ``task_runs.id``) and those that were still open,
    however many tasks the run holds. Read it through one `HistoryReader`
    (`Snapshot.follow`, `Snapshot.changed`), so each look agrees with the run's counts read
    in the same snapshot; called on its own, each look is one read transaction.
    """

    def __init__(self, conn: sqlite3.Connection, run_id: int) -> None:
        """Follow ``run_id``'s rows through ``conn``."""
        self.conn = conn
        self.run_id = run_id
        self.last_row = 0
        self.open: dict[int, TaskInfo] = {}

    def start(self) -> None:
        """Remember where the run stands now: its last row and its rows not yet terminal."""
        with one_read(self.conn):
            row = self.conn.execute(
                "SELECT max(id) FROM task_runs WHERE run_id = ?", (self.run_id,)
            ).fetchone()
            self.last_row = int(row[0] or 0)
            self.open = dict(
                self._read(f"WHERE run_id = ? AND status NOT IN {sql_in(TERMINAL)}", (self.run_id,))
            )

    def changed(self) -> list[TaskInfo]:
        """The rows added or changed since the last call (or `start`), by task id."""
        with one_read(self.conn):
            rows = self._read("WHERE run_id = ? AND id > ?", (self.run_id, self.last_row))
            ids = list(self.open)
            for i in range(0, len(ids), _IDS_PER_QUERY):
                chunk = ids[i : i + _IDS_PER_QUERY]
                marks = ", ".join("?" * len(chunk))
                rows += self._read(f"WHERE id IN ({marks})", tuple(chunk))
        changed = []
        for row_id, task in rows:
            self.last_row = max(self.last_row, row_id)
            if self.open.get(row_id) == task:
                continue
            changed.append(task)
            if task.status in TERMINAL:
                self.open.pop(row_id, None)
            else:
                self.open[row_id] = task
        return sorted(changed, key=lambda t: t.task_id)

    def _read(self, where: str, params: tuple[Any, ...]) -> list[tuple[int, TaskInfo]]:
        sql = f"SELECT id, {_TASK_COLUMNS} FROM task_runs {where}"
        return [(int(row[0]), TaskInfo(*row[1:])) for row in self.conn.execute(sql, params)]


def __getattr__(name: str) -> Any:
    """Keep ``pipeloom.history.insert_run`` and the other run-row writers importable.

    They were defined here before the writer's half moved to `pipeloom.record._runs`.
    """
    from pipeloom.record import _runs

    if name in _runs.__all__:
        return getattr(_runs, name)
    raise AttributeError(f"module 'pipeloom.history' has no attribute {name!r}")
