"""The writer thread's lifecycle: its settings, opening the file, staying alive, closing.

Everything around the batches (`_batch`): the settings a writer is built with (from keywords or
one `RunOptions`), opening the database (schema, dead runs marked, the run row, retention),
the heartbeat that keeps the run's lease, the check that the file is still the one opened,
and the end: the run row closed, ``PRAGMA optimize``, the WAL checkpoint, or, after a fatal
error, the run marked interrupted. Mixed into `pipeloom.writer.SQLiteWriter`, whose
attributes it uses; nothing here runs outside the writer thread except `writer_settings`.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pipeloom._control import RunEnd
from pipeloom._text import storable
from pipeloom.db import MEMORY, Synchronous, connect, init_schema, wal_checkpoint
from pipeloom.errors import DatabaseError
from pipeloom.lease import DEFAULT_LEASE_S
from pipeloom.options import RunOptions, check_settings
from pipeloom.record._fileid import FileIdentity
from pipeloom.record._handlers import HandlerSandbox, is_fatal
from pipeloom.record._registry import callable_name
from pipeloom.record._runs import beat, close_run, insert_run, interrupt_run, mark_dead_runs
from pipeloom.record._task_sql import prepare as prepare_task_sql
from pipeloom.retention import Retention, apply_retention
from pipeloom.tasklogs import DEFAULT_TASK_LOG_LIMIT

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_COMMIT_INTERVAL",
    "QueueLike",
    "SchemaFn",
    "WriterLifecycle",
    "WriterSettings",
    "writer_settings",
]

log = logging.getLogger("pipeloom.writer")

SchemaFn = Callable[[sqlite3.Connection], None]
DEFAULT_BATCH_SIZE = 5_000
"""Most messages applied in one transaction."""
DEFAULT_COMMIT_INTERVAL = 0.02
"""Seconds the writer may wait for more messages before committing a small batch."""
_CHECKPOINT_BUSY_MS = 250
"""How long the final WAL checkpoint waits for readers before settling for less."""
_FILE_CHECK_EVERY = 0.2
"""Seconds between looks at the database path after commits (idle ticks and the end always
look)."""


class QueueLike(Protocol):
    """Where the writer takes messages from: a `MessageQueue`, or any ``queue.Queue``."""

    def get(self, block: bool = True, timeout: float | None = None) -> Any: ...
    def get_nowait(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class WriterSettings:
    """The writer's settings once keywords and ``options=`` are merged and checked."""

    wal: bool
    synchronous: Synchronous
    batch_size: int
    commit_interval: float
    lease: float
    task_log_limit: int
    listeners: tuple[Any, ...]
    retention: Retention | None


def writer_settings(
    options: RunOptions | None,
    *,
    wal: bool,
    synchronous: Synchronous,
    batch_size: int,
    commit_interval: float,
    lease: float | None,
    task_log_limit: int,
    listeners: Iterable[Any],
    retention: Retention | None,
    run_name: str,
) -> WriterSettings:
    """Merge ``options`` into the keywords `SQLiteWriter` was given, and check the result.

    Raises:
        TypeError: a setting came both as a keyword and in ``options``.
        InvalidArgumentError: a setting no run could use (`pipeloom.options.check_settings`;
            a ``ValueError``).
    """
    if options is not None:
        given = {
            "wal": (wal, True),
            "synchronous": (synchronous, "NORMAL"),
            "batch_size": (batch_size, DEFAULT_BATCH_SIZE),
            "commit_interval": (commit_interval, DEFAULT_COMMIT_INTERVAL),
            "lease": (lease, None),
            "task_log_limit": (task_log_limit, DEFAULT_TASK_LOG_LIMIT),
        }
        both = [name for name, (value, default) in given.items() if value != default]
        if both:
            raise TypeError(
                f"SQLiteWriter got {', '.join(both)} both as keyword(s) and in options=; "
                "pass each setting one way"
            )
        wal, synchronous, lease = options.wal, options.synchronous, options.lease
        batch_size = options.batch_size or DEFAULT_BATCH_SIZE
        if options.commit_interval is not None:
            commit_interval = options.commit_interval
        task_log_limit = options.task_log_limit
        listeners = (*listeners, *options.listeners)
        if retention is None and (options.keep_runs or options.keep_days is not None):
            retention = Retention(options.keep_runs, options.keep_days, run_name)
    # The same rule as RunOptions and run_pipeline's keywords: one check for every way in.
    check_settings(
        "SQLiteWriter",
        synchronous=synchronous,
        batch_size=batch_size,
        commit_interval=commit_interval,
        lease=lease,
        task_log_limit=task_log_limit,
    )
    if lease is None:
        lease = DEFAULT_LEASE_S
    return WriterSettings(
        wal=wal,
        synchronous=synchronous,
        batch_size=batch_size,
        commit_interval=commit_interval,
        lease=float(lease),
        task_log_limit=task_log_limit,
        listeners=tuple(listeners),
        retention=retention,
    )


class WriterLifecycle:
    """Opening, heartbeat, file check and closing of `pipeloom.writer.SQLiteWriter`."""

    db_path: str | Path
    msg_q: QueueLike
    wal: bool
    synchronous: Synchronous
    store_task_status: bool
    lease: float
    run_name: str
    workers: int | None
    tasks_total: int | None
    params: dict[str, Any]
    request: dict[str, Any]
    retention: Retention | None
    run_id: int | None
    error: BaseException | None
    messages_applied: int
    messages_dead: int
    run_status: str | None
    final_counts: dict[str, int]
    failed_task_ids: list[int]
    failed_sample: list[tuple[int, str, str]]
    _schema: SchemaFn | None
    _sandbox: HandlerSandbox
    _conn: sqlite3.Connection | None
    _file: FileIdentity | None
    _file_checked: float
    _beat_every: float
    _last_beat: float
    _run_end: RunEnd | None
    _stop_hint: str | None

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        log.error("writer stopped: %s", exc)
        fail = getattr(self.msg_q, "fail", None)
        if callable(fail):
            fail(exc)

    def _abandon_run(self, exc: BaseException) -> None:
        """Best effort: mark the run and its running tasks interrupted after a fatal error.

        Without this the run would look alive (status running, our live pid) until a writer
        in another process opens the file. The writer's own connection is tried first; when
        it is broken or cannot write (a handler clamped it, its cache is poisoned), a fresh
        connection is tried; if that fails too (a truly full disk), the next writer elsewhere
        does it.
        """
        if not self.store_task_status or self.run_id is None:
            return
        conn = self._conn
        try:
            if conn is not None and conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            conn = None  # closed or broken
        why = f"the writer stopped ({storable(exc)})"
        last: Exception | None = None
        for attempt in (conn, None):
            if attempt is None and str(self.db_path) == MEMORY:
                break
            try:
                self._mark_abandoned(attempt, self.run_id, why)
            except (sqlite3.Error, DatabaseError) as err:
                last = err
                continue
            self.run_status = "interrupted"
            return
        log.warning(
            "%s: could not mark run %s interrupted after the writer stopped (%s); "
            "the next writer opened by another process will",
            self.db_path,
            self.run_id,
            last,
        )

    def _mark_abandoned(self, conn: sqlite3.Connection | None, run_id: int, why: str) -> None:
        """Mark this run interrupted through ``conn``, or a fresh connection when None.

        Raises:
            sqlite3.Error, DatabaseError: it could not be written (rolled back).
        """
        own = conn is None
        if conn is None:
            conn = connect(self.db_path, wal=self.wal, synchronous=self.synchronous)
        try:
            conn.execute("BEGIN IMMEDIATE")
            interrupt_run(
                conn,
                run_id,
                why=why,
                task_message=f"interrupted: {why}",
                messages=self.messages_applied + self.messages_dead,
                cause="writer_failed",
            )
            conn.execute("COMMIT")
        except BaseException:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error as rollback_err:
                log.debug("rollback after failed abandon also failed: %s", rollback_err)
            raise
        finally:
            if own:
                conn.close()

    def _open(self) -> None:
        conn = connect(self.db_path, wal=self.wal, synchronous=self.synchronous)
        self._conn = conn
        try:
            if self.store_task_status:
                init_schema(conn, self.db_path)
                self._mark_interrupted(conn)
            if self._schema is not None:
                self._apply_schema(conn, self._schema)
            if self.store_task_status:
                self.run_id = self._insert_run(conn)
                # Retention (pipeloom.retention): after the insert, so this run is live.
                if self.retention is not None and self.retention.active:
                    apply_retention(conn, self.retention, str(self.db_path))
        except sqlite3.Error as exc:
            self._close_after_failed_open(conn)
            raise DatabaseError(f"{self.db_path}: cannot prepare the database ({exc})") from exc
        except BaseException:
            self._close_after_failed_open(conn)
            raise
        self._file = FileIdentity.of(self.db_path, wal=self.wal)
        try:
            # Outside any transaction, so no rollback of a batch can take the table away.
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS pipeloom_mark (batch INTEGER)")
            # Built-in handlers (pipeloom.state) read the run they write for from here.
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS pipeloom_run (id INTEGER)")
            conn.execute("DELETE FROM temp.pipeloom_run")
            conn.execute("INSERT INTO temp.pipeloom_run (id) VALUES (?)", (self.run_id,))
            if self.store_task_status:
                prepare_task_sql(conn)
        except sqlite3.Error as exc:
            self._close_after_failed_open(conn)
            raise DatabaseError(
                f"{self.db_path}: SQLite {sqlite3.sqlite_version} cannot prepare the writer's "
                f"statements ({exc}); pipeloom needs SQLite 3.24 or newer (UPSERT)"
            ) from exc
        conn.set_authorizer(self._sandbox.authorize)

    def _close_after_failed_open(self, conn: sqlite3.Connection) -> None:
        """Leave no lock behind: another process, or a retry here, must be able to write."""
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.warning("%s: rollback after a failed open failed: %s", self.db_path, exc)
        finally:
            conn.close()
            self._conn = None

    def _apply_schema(self, conn: sqlite3.Connection, schema: SchemaFn) -> None:
        """Run the user's ``schema=`` callable in one transaction; its failure is named.

        Raises:
            DatabaseError: the callable raised; nothing it did is kept.
        """
        conn.execute("BEGIN IMMEDIATE")
        try:
            schema(conn)
        except Exception as exc:
            raise DatabaseError(
                f"{self.db_path}: schema callable {callable_name(schema)} raised "
                f"{type(exc).__name__}: {storable(exc)}; nothing it did was kept, fix it and "
                "run again"
            ) from exc
        # conn.executescript() commits first: the schema is then already durable.
        if conn.in_transaction:
            conn.execute("COMMIT")

    def _mark_interrupted(self, conn: sqlite3.Connection) -> None:
        dead = mark_dead_runs(conn)
        if dead:
            log.warning(
                "marked %d run(s) whose writer is gone as interrupted: %s",
                len(dead),
                "; ".join(f"run {run_id}: {why}" for run_id, why in dead),
            )

    def _insert_run(self, conn: sqlite3.Connection) -> int:
        run_id = insert_run(
            conn,
            name=self.run_name,
            workers=self.workers,
            tasks_total=self.tasks_total,
            params=self.params,
            lease=self.lease,
            request=self.request,
        )
        self._last_beat = time.monotonic()
        return run_id

    def _heartbeat(self) -> None:
        """Refresh this run's ``heartbeat_at`` when a third of the lease has passed.

        Called after each batch and whenever the queue is idle, so the run stays alive
        through long tasks that send nothing; at most one tiny commit per third of a lease.
        A busy file only delays the beat (the next tick retries); a fatal error stops the
        writer as any other write would.
        """
        conn = self._conn
        if conn is None or self.run_id is None or not self.store_task_status:
            return
        now = time.monotonic()
        if now - self._last_beat < self._beat_every:
            return
        try:
            beat(conn, self.run_id)
        except sqlite3.Error as exc:
            if is_fatal(exc):
                raise
            log.warning(
                "%s: heartbeat of run %s failed (%s); retrying", self.db_path, self.run_id, exc
            )
            return
        self._last_beat = now

    def _check_file(self, soon: bool = False) -> None:
        """Stop if the path no longer names the file this writer writes to.

        Args:
            soon: after a commit, look only if the last look is `_FILE_CHECK_EVERY` old: each
                look is two ``stat`` calls, and each hands the GIL to a worker that may keep
                it for a switch interval (5 ms) while the writer has a batch to write.

        Raises:
            DatabaseError: the file (or its WAL) was deleted or replaced mid-run; the rows
                went to the removed file, which no reader of the path will ever see.
        """
        if self._file is None:
            return
        now = time.monotonic()
        if soon and now - self._file_checked < _FILE_CHECK_EVERY:
            return
        self._file_checked = now
        self._file.check()

    def _close_run(self) -> None:
        conn = self._conn
        if conn is None or not self.store_task_status or self.run_id is None:
            return
        closed = close_run(
            conn,
            self.run_id,
            end=self._run_end,
            stop_hint=self._stop_hint,
            messages=self.messages_applied + self.messages_dead,
        )
        self.run_status = closed.status
        self.final_counts = closed.counts
        self.failed_task_ids = closed.failed_task_ids
        self.failed_sample = closed.failed_sample

    def _close(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            if self.error is None:
                # IMMEDIATE: optimize may read, then write (ANALYZE); in autocommit that upgrade
                # fails at once with "database is locked" if another process just committed.
                # A bounded ANALYZE, as SQLite advises for optimize: without the limit it reads
                # every row of every table it analyses (100,000 tasks: 50-90 ms more, and it
                # grows with the file's whole history).
                conn.execute("PRAGMA analysis_limit = 1000")
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("PRAGMA optimize")
                conn.execute("COMMIT")
                if self.wal and str(self.db_path) != MEMORY:
                    # TRUNCATE waits (busy timeout, 10 s) for every reader to finish; one
                    # open read transaction elsewhere would stall the run's end that long.
                    # After a short wait it checkpoints what it can, like PASSIVE.
                    conn.execute(f"PRAGMA busy_timeout = {_CHECKPOINT_BUSY_MS}")
                    wal_checkpoint(conn, "TRUNCATE")
        except sqlite3.Error as exc:
            log.warning("%s: final optimize/checkpoint failed: %s", self.db_path, exc)
        finally:
            conn.close()
            self._conn = None
