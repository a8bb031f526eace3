"""Deleting a prune's rows in write transactions bounded by time (`pipeloom.retention`).

A run writing the same file waits for the lock while a prune holds it, so every transaction
here ends as soon as its time (``Pacing.hold``, its COMMIT included) is up, and the prune
pauses between transactions. The planning, the policy and the public names are in
`pipeloom.retention`; this module only deletes and vacuums.
"""

from __future__ import annotations

import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

from pipeloom.lease import stale_sql
from pipeloom.status import ACTIVE, sql_in

if TYPE_CHECKING:
    from pipeloom.retention import Pacing, PruneResult

__all__ = ["MAX_CHUNK", "execute", "incremental_vacuum"]

MAX_CHUNK: Final = 20_000
"""Most rows one deleting statement may take, whatever the last one measured."""


def _write(
    conn: sqlite3.Connection, work: Callable[[float], int]
) -> tuple[int, float, float, float]:
    """Run ``work(began)`` in one write transaction.

    Returns:
        (rows, seconds held, seconds waited for the lock, seconds the COMMIT took).
    """
    asked = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    held = time.perf_counter()
    try:
        rows = work(held)
        committing = time.perf_counter()
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    done = time.perf_counter()
    return rows, done - held, held - asked, done - committing


class _Deleter:
    """Deletes rows in statements sized by time, and ends a transaction when its time is up.

    A transaction is bounded by the clock, not by a row count: it runs statements of
    ``step`` rows and stops as soon as the time it has taken plus what its COMMIT will take
    reaches ``hold``. The COMMIT writes every page the deletions dirtied to the WAL (on 10
    million task rows, about one ``task_key`` index page per row deleted: 60-75 ms for 5,000
    rows, as long as the deleting itself), so it is estimated per row from the last one.
    ``step`` is sized so one statement takes about a fifth of ``hold``, cut at once after a
    slow one. A row count sized from the last transaction's time alone let transactions
    overshoot whenever their rows met uncached pages (0.6 s holds on 10 million rows).
    """

    def __init__(self, conn: sqlite3.Connection, pacing: Pacing, result: PruneResult) -> None:
        self.conn = conn
        self.pacing = pacing
        self.result = result
        self.step = pacing.first_chunk
        self.commit_per_row = 0.0

    def committed(self, rows: int, seconds: float) -> None:
        """Learn what a COMMIT costs per row deleted (quick to rise, slow to fall)."""
        if rows > 0:
            self.commit_per_row = max(seconds / rows, 0.7 * self.commit_per_row)

    def more(self, began: float, rows: int) -> bool:
        """True while another statement fits in this transaction's ``hold``."""
        spent = time.perf_counter() - began + rows * self.commit_per_row
        return spent + self.pacing.hold / 5 <= self.pacing.hold or rows == 0

    def sized(self, took: float, asked: int, got: int) -> None:
        """Size the next statement from what this one took (and its COMMIT will)."""
        target = self.pacing.hold / 5
        cost = took + got * self.commit_per_row
        if cost > target:
            self.step = max(10, int(self.step * max(0.25, target / cost)))
        elif got >= asked and cost < target / 2:
            self.step = min(MAX_CHUNK, self.step * 2)

    def run_rows(self, ids: deque[int], gone: list[int]) -> Callable[[float], int]:
        """``work`` deleting the run rows in ``ids`` still not live (their ids to ``gone``)."""

        def work(began: float) -> int:
            n = 0
            while ids and self.more(began, n):
                chunk = [ids.popleft() for _ in range(min(len(ids), max(1, self.step)))]
                marks = ",".join("?" * len(chunk))
                # Checked again under the lock: a stale run whose writer came back is live.
                deletable = (
                    f"id IN ({marks}) AND NOT (status IN {sql_in(ACTIVE)} AND NOT {stale_sql()})"
                )
                t = time.perf_counter()
                gone.extend(
                    int(r[0])
                    for r in self.conn.execute(
                        f"SELECT id FROM pipeline_runs WHERE {deletable}", chunk
                    )
                )
                self.conn.execute(f"DELETE FROM pipeline_runs WHERE {deletable}", chunk)
                self.sized(time.perf_counter() - t, len(chunk), len(chunk))
                n += len(chunk)
            return n

        return work

    def owned_rows(self, work_list: deque[tuple[str, int]]) -> Callable[[float], int]:
        """``work`` deleting the rows of the runs in ``work_list``, front first."""

        def work(began: float) -> int:
            n = 0
            while work_list and self.more(began, n):
                table, run_id = work_list[0]
                asked = self.step
                t = time.perf_counter()
                got = self.conn.execute(
                    f"DELETE FROM {table} WHERE rowid IN "
                    f"(SELECT rowid FROM {table} WHERE run_id = ? LIMIT ?)",
                    (run_id, asked),
                ).rowcount
                self.sized(time.perf_counter() - t, asked, got)
                deleted = self.result.deleted
                deleted[table] = deleted.get(table, 0) + got
                if got < asked:
                    work_list.popleft()
                n += got
            return n

        return work


def execute(
    conn: sqlite3.Connection,
    result: PruneResult,
    tables: Sequence[str],
    pacing: Pacing,
    on_progress: Callable[[PruneResult], None] | None = None,
    budget: float | None = None,
) -> PruneResult:
    """Delete ``result.plan``'s runs, then their rows in ``tables``, the lock held briefly.

    Returns:
        ``result``, filled in: rows deleted per table, transactions, the longest hold.
    """
    plan = result.plan
    started = last_checkpoint = time.perf_counter()
    contended_until = 0.0
    (autocheckpoint,) = conn.execute("PRAGMA wal_autocheckpoint").fetchone()
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    deleter = _Deleter(conn, pacing, result)
    gone: list[int] = []
    # The run rows first: from then on every row deleted is invisible to readers already.
    run_ids = deque(plan.ids)
    work: deque[tuple[str, int]] = deque(
        (table, run_id) for run_id in [*plan.orphans, *plan.ids] for table in tables
    )
    try:
        first = True
        while run_ids or work:
            if budget is not None and time.perf_counter() - started > budget:
                # Runs whose row is gone are invisible already; the next prune deletes
                # their rows that are left, and the runs not reached yet are whole.
                break
            if not first:
                # Another writer took the lock in a pause: writers are waiting, so the lock
                # is left free longer for a while, long enough for a retry of each of them.
                contended = time.perf_counter() < contended_until
                time.sleep(pacing.pause_contended if contended else pacing.pause)
            first = False
            step = deleter.run_rows(run_ids, gone) if run_ids else deleter.owned_rows(work)
            cpu = time.thread_time()
            rows, held, waited, commit_s = _write(conn, step)
            cpu = time.thread_time() - cpu
            deleter.committed(rows, commit_s)
            if waited > 0.001:
                contended_until = time.perf_counter() + 2.0
            result.transactions += 1
            result.longest_hold_s = max(result.longest_hold_s, held)
            result.holds.append(held)
            result.longest_hold_cpu_s = max(result.longest_hold_cpu_s, cpu)
            if time.perf_counter() - last_checkpoint > pacing.checkpoint_every:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                last_checkpoint = time.perf_counter()
            result.deleted["pipeline_runs"] = len(gone)
            if on_progress is not None:
                on_progress(result)
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    finally:
        conn.execute(f"PRAGMA wal_autocheckpoint = {int(autocheckpoint)}")
    result.deleted["pipeline_runs"] = len(gone)
    result.elapsed_s = time.perf_counter() - started
    return result


def incremental_vacuum(conn: sqlite3.Connection, pacing: Pacing) -> int:
    """Give free pages back in transactions bounded by time, like the prune's; pages freed.

    Each ``incremental_vacuum(n)`` moves pages from the end of the file into free slots
    and truncates it, one write transaction; ``n`` is sized from what the last one took so
    each holds the lock about ``pacing.hold`` seconds.
    """
    pages, freed = 256, 0
    while True:
        (free,) = conn.execute("PRAGMA freelist_count").fetchone()
        if int(free) <= 0:
            return freed
        began = time.perf_counter()
        conn.execute(f"PRAGMA incremental_vacuum({pages})").fetchall()
        took = time.perf_counter() - began
        freed += min(pages, int(free))
        pages = int(min(max(pages * min(2.0, pacing.hold / max(took, 1e-6)), 16), 100_000))
        time.sleep(pacing.pause)
