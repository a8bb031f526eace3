"""Retention: deleting whole old runs from a run database, without blocking a live run.

A pipeline that runs every hour keeps every task, attempt, log line and dead letter of every
run unless something deletes them. `prune` (``pipeloom db prune``) and the run setting
``RunOptions(keep_runs=..., keep_days=...)`` (applied by the writer as a run starts) delete
whole runs: the run's row and every row of pipeloom's own tables that names it.

What is never deleted:

- a live run (``running`` with an unexpired lease; a stale run, whose writer is gone, may go);
- the latest run of each pipeline, which ``--resume`` reads back;
- every run whose work a kept run's ``skipped`` rows point to (``{"done_in_run": N}``):
  resume and stages read those results back from it;
- a run that a table of the application's references with a foreign key;
- any row of a table pipeloom did not create (user tables are never read for deletion, and
  the deleting connection has foreign keys off, so nothing cascades into them).

The run rows go first (readers, the ``runs`` view and ``pipeloom status`` stop seeing
those runs as each commits); their task rows, attempts, logs and
dead letters follow in transactions bounded in time (`Pacing`), with a pause between them
so a run writing the same file gets the lock between them (measured in benchmarks/README.md,
"Retention"). The run rows themselves go in transactions bounded the same way. A
prune that is stopped half way leaves rows of runs that no longer exist; the next prune
deletes them first (they are invisible to every reader, which starts from the run row).
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from pipeloom._pruning import execute, incremental_vacuum
from pipeloom.db import BUSY_TIMEOUT_MS, check_path, describe_error
from pipeloom.errors import DatabaseError, InvalidArgumentError
from pipeloom.lease import stale_sql
from pipeloom.schema import PIPELOOM_TABLES, check_schema
from pipeloom.status import ACTIVE, sql_in

__all__ = [
    "RUN_TABLES",
    "Pacing",
    "PrunePlan",
    "PruneResult",
    "PrunedRun",
    "Retention",
    "TableSize",
    "apply_retention",
    "parse_age",
    "plan_prune",
    "prune",
    "table_sizes",
    "vacuum",
]

log = logging.getLogger("pipeloom.retention")

START_BUDGET_S: Final = 3.0
"""Seconds a run's writer spends on retention as it starts (a third of the default lease,
so the run never looks stale); a larger backlog is finished by the runs that follow."""

RUN_TABLES: Final = ("task_runs", "task_attempts", "task_logs", "dead_letters")
"""pipeloom's tables whose rows belong to one run (``run_id``), deleted with it. A table
pipeloom adds later with a ``run_id`` joins this list; no other table is ever touched."""

_AGE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "": 86400}


def parse_age(text: str | float | timedelta) -> timedelta:
    """Read an age: ``30d``, ``12h``, ``90m``, ``2w``, ``45s``, or a number of days.

    Raises:
        InvalidArgumentError: naming the value and the forms it takes.
    """
    if isinstance(text, timedelta):
        seconds = text.total_seconds()
    elif isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text) * 86400
    else:
        match = _AGE.match(str(text))
        if match is None:
            raise InvalidArgumentError(
                f"age {text!r}: use a number and a unit, e.g. 30d, 12h, 90m, 2w or 45s"
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not 0 <= seconds < 1e11:
        raise InvalidArgumentError(f"age {text!r}: use 0 or more, e.g. 30d")
    return timedelta(seconds=seconds)


@dataclass(frozen=True, slots=True)
class Retention:
    """Which runs may go: beyond the newest ``keep_runs`` of their pipeline, or older.

    Beyond the newest ``keep_runs`` of their pipeline and/or older than ``keep_days``. With
    both, a run goes only when both say so (the newest ``keep_runs`` are kept however old,
    and nothing younger than ``keep_days`` goes).
    """

    keep_runs: int | None = None
    """Runs kept per pipeline name, newest first (at least 1: the latest is always kept)."""
    keep_days: float | None = None
    """Runs that started more recently than this many days ago are kept."""
    pipeline: str | None = None
    """Only runs of this pipeline name are considered (None: every pipeline)."""

    def __post_init__(self) -> None:
        """Refuse a policy that deletes nothing sensible, before anything is deleted.

        Raises:
            InvalidArgumentError: naming the setting, the value and what it takes.
        """
        if self.keep_runs is not None and (
            isinstance(self.keep_runs, bool)
            or not isinstance(self.keep_runs, int)
            or self.keep_runs < 1
        ):
            raise InvalidArgumentError(
                f"keep_runs={self.keep_runs!r}: use a whole number, 1 or more (the latest run "
                "of a pipeline is always kept)"
            )
        if self.keep_days is not None:
            parse_age(self.keep_days)

    @property
    def active(self) -> bool:
        """True when the policy deletes anything at all."""
        return self.keep_runs is not None or self.keep_days is not None


@dataclass(frozen=True, slots=True)
class PrunedRun:
    """One run a prune deletes (or, dry, would delete)."""

    id: int
    name: str
    status: str
    started_at: str


@dataclass(slots=True)
class PrunePlan:
    """What a prune deletes and what it keeps on purpose, decided in one read."""

    runs: list[PrunedRun] = field(default_factory=list)
    """The runs to delete, oldest first."""
    kept: dict[int, str] = field(default_factory=dict)
    """Runs a rule would delete but that are kept, with why (live, latest, resume source)."""
    orphans: list[int] = field(default_factory=list)
    """Run ids with rows left by an earlier prune that stopped half way (deleted first)."""
    rows: dict[str, int] = field(default_factory=dict)
    """Rows per table that go with the runs (counted for ``--dry-run`` and the report)."""

    @property
    def ids(self) -> list[int]:
        """The ids of the runs to delete."""
        return [run.id for run in self.runs]


@dataclass(frozen=True, slots=True)
class Pacing:
    """How a prune shares the file with a run that writes it.

    Each write transaction deletes rows until its time, the COMMIT included, reaches
    ``hold`` (measured statement by statement, see `pipeloom._pruning`), then the prune sleeps
    ``pause`` seconds with the lock released. A waiting writer's busy handler retries 1, 3,
    8, 18, 33, 53 and 78 ms after it starts waiting: no two retries are more than 25 ms
    apart until then, so a free window of 25 ms that opens within 75 ms of its first try
    contains one. With several writers one may lose a window to another and back off
    further, so while another writer is seen taking the lock the pause is
    ``pause_contended``.

    ``hold`` is short on purpose. What made a writer wait longest was not the work in a
    transaction but the pruning thread waiting for a core while it held the lock: on a
    busy 2-core machine one transaction held it 319 ms for 4 ms of CPU. A transaction
    that fits in the slice a thread gets as it wakes from the pause is rarely
    interrupted: 15 ms transactions kept every wait of a concurrent writer under 100 ms
    where 50 ms ones let 10 in 5,000 wait up to 190 ms (benchmarks/README.md,
    "Retention"), for a prune half as fast.

    The WAL is checkpointed by the prune itself every ``checkpoint_every`` seconds, outside
    any transaction: an automatic checkpoint after each commit (SQLite's default, every
    1,000 pages) synced the file in every transaction and made the prune four times slower
    (15,000 against 64,000 task rows a second on 10 million rows).
    """

    hold: float = 0.015
    """Target seconds one deleting transaction holds the write lock, its COMMIT included."""
    pause: float = 0.025
    """Seconds the lock is left free between two transactions."""
    pause_contended: float = 0.06
    """The pause while other writers want the lock (one took it in the last 2 s): a writer
    whose busy handler has backed off to 50 ms retries still finds it free."""
    checkpoint_every: float = 2.0
    """Seconds between the prune's own WAL checkpoints, taken outside any transaction."""
    first_chunk: int = 500
    """Rows in the first statement, before its time is known."""


@dataclass(slots=True)
class PruneResult:
    """What a prune did."""

    plan: PrunePlan
    deleted: dict[str, int] = field(default_factory=dict)
    """Rows deleted per table (``pipeline_runs`` included)."""
    transactions: int = 0
    """Write transactions it took."""
    longest_hold_s: float = 0.0
    """The longest any of them held the write lock (seconds)."""
    holds: list[float] = field(default_factory=list)
    """How long each of them held it (seconds), in order."""
    longest_hold_cpu_s: float = 0.0
    """The most CPU time any of them used (seconds). On a busy machine a transaction holds
    the lock longer than it computes, while the pruning thread waits for a core; this says
    how much of ``longest_hold_s`` the prune itself spent."""
    elapsed_s: float = 0.0
    """Wall-clock seconds, pauses included."""


def _connect(db_path: str | Path) -> sqlite3.Connection:
    check_path(db_path)
    path = Path(db_path)
    if not path.exists():
        raise DatabaseError(f"{db_path}: no such database file; check the path")
    try:
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # Index pages of a large task table stay cached from one transaction to the next.
        conn.execute("PRAGMA cache_size = -262144")
        # As the writer: no fsync per commit (a crash loses at most the last deletions, and
        # a prune stopped half way is finished by the next one); FULL spent most of each
        # transaction's 40 ms in fsync.
        conn.execute("PRAGMA synchronous = NORMAL")
        # Off on purpose: an application's ON DELETE CASCADE must never reach its own rows.
        conn.execute("PRAGMA foreign_keys = OFF")
        if not check_schema(conn, str(db_path)):
            conn.close()
            raise DatabaseError(f"{db_path}: holds no pipeloom runs; nothing to prune")
    except sqlite3.Error as exc:
        raise describe_error(db_path, exc, writing=True) from exc
    return conn


def _tables(conn: sqlite3.Connection) -> list[str]:
    """The run tables present in this file (all of them in a current schema)."""
    have = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    return [t for t in RUN_TABLES if t in have and t in PIPELOOM_TABLES]


def _referenced_by_others(conn: sqlite3.Connection) -> dict[int, str]:
    """Runs an application's table points at with a foreign key to ``pipeline_runs``."""
    kept: dict[int, str] = {}
    tables = [
        str(r[0])
        for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        if str(r[0]) not in PIPELOOM_TABLES and not str(r[0]).startswith("sqlite_")
    ]
    for table in tables:
        quoted = '"' + table.replace('"', '""') + '"'
        for fk in conn.execute(f"PRAGMA foreign_key_list({quoted})").fetchall():
            if str(fk[2]) != "pipeline_runs":
                continue
            column = '"' + str(fk[3]).replace('"', '""') + '"'
            for (ref,) in conn.execute(f"SELECT DISTINCT {column} FROM {quoted}"):
                if isinstance(ref, int):
                    kept[ref] = f"referenced by your table {table}"
    return kept


def _orphans(conn: sqlite3.Connection, tables: Sequence[str]) -> list[int]:
    """Run ids with rows but no run row (an earlier prune stopped half way).

    One index seek per distinct run id, so a file of 10 million task rows answers in
    milliseconds rather than scanning them.
    """
    found: set[int] = set()
    for table in tables:
        last = -(2**63)
        while True:
            row = conn.execute(
                f"SELECT min(run_id) FROM {table} WHERE run_id > ?", (last,)
            ).fetchone()
            if row is None or row[0] is None:
                break
            last = int(row[0])
            exists = conn.execute("SELECT 1 FROM pipeline_runs WHERE id = ?", (last,)).fetchone()
            if exists is None:
                found.add(last)
    return sorted(found)


def plan_prune(
    conn: sqlite3.Connection, policy: Retention, *, count_rows: bool = True
) -> PrunePlan:
    """Decide which runs go, in one read transaction; writes nothing.

    Args:
        conn: a connection to a file holding the current schema.
        policy: which runs may go.
        count_rows: also count the rows per table that go with them (one index range each).
    """
    plan = PrunePlan()
    if not policy.active:
        return plan
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")
    try:
        where, params = "", []
        if policy.pipeline is not None:
            where, params = "WHERE name = ?", [policy.pipeline]
        rows = conn.execute(
            "SELECT id, name, status, started_at, "
            f"CASE WHEN status IN {sql_in(ACTIVE)} AND NOT {stale_sql()} THEN 1 ELSE 0 END, "
            "julianday('now') - julianday(started_at) "
            f"FROM pipeline_runs {where} ORDER BY id DESC",
            params,
        ).fetchall()
        seen: dict[str, int] = {}
        candidates: list[PrunedRun] = []
        for run_id, name, status, started, live, age_days in rows:
            rank = seen.get(name, 0)
            seen[name] = rank + 1
            by_count = policy.keep_runs is None or rank >= policy.keep_runs
            by_age = policy.keep_days is None or (
                age_days is not None
                and age_days * 86400 > parse_age(policy.keep_days).total_seconds()
            )
            if not (by_count and by_age):
                continue
            if live:
                plan.kept[run_id] = "live: its writer holds an unexpired lease"
            elif rank == 0:
                plan.kept[run_id] = f"the latest run of pipeline {name!r} (resume reads it)"
            else:
                candidates.append(PrunedRun(int(run_id), str(name), str(status), str(started)))
        going = {run.id for run in candidates}
        kept_ids = {int(r[0]) for r in rows if int(r[0]) not in going}
        protected = _referenced_by_others(conn)
        # A kept run's skipped rows point at the run that did their work: resume and stages
        # read that result back, so the pointed-to run stays.
        for run_id in sorted(kept_ids):
            for (source,) in conn.execute(
                "SELECT DISTINCT json_extract(result, '$.done_in_run') FROM task_runs "
                "WHERE run_id = ? AND status = 'skipped' AND json_valid(result)",
                (run_id,),
            ):
                if isinstance(source, int) and source in going:
                    protected.setdefault(source, f"run {run_id} resumed from it")
        for run in candidates:
            if run.id in protected:
                plan.kept[run.id] = protected[run.id]
            else:
                plan.runs.append(run)
        plan.runs.reverse()  # oldest first
        tables = _tables(conn)
        plan.orphans = _orphans(conn, tables)
        if count_rows:
            ids = plan.ids + plan.orphans
            plan.rows["pipeline_runs"] = len(plan.runs)
            for table in tables:
                plan.rows[table] = sum(
                    int(
                        conn.execute(
                            f"SELECT count(*) FROM {table} WHERE run_id = ?", (i,)
                        ).fetchone()[0]
                    )
                    for i in ids
                )
    finally:
        if own and conn.in_transaction:
            conn.execute("ROLLBACK")
    return plan


def prune(
    db_path: str | Path,
    policy: Retention,
    *,
    dry_run: bool = False,
    pacing: Pacing | None = None,
    on_progress: Callable[[PruneResult], None] | None = None,
    budget: float | None = None,
) -> PruneResult:
    """Delete the runs ``policy`` lets go from ``db_path`` (see the module docstring).

    Args:
        db_path: a run database holding the current schema.
        policy: which runs may go.
        dry_run: only plan; the result's ``plan`` says what would go.
        pacing: how long each transaction holds the lock and how long it lets go.
        on_progress: called after each deleting transaction.
        budget: stop after about this many seconds; the runs are gone already, and the next
            prune deletes their rows that are left.

    Raises:
        DatabaseError: the file is missing, not pipeloom's, outdated or unwritable.
    """
    conn = _connect(db_path)
    try:
        plan = plan_prune(conn, policy)
        if dry_run:
            return PruneResult(plan)
        return execute(
            conn, PruneResult(plan), _tables(conn), pacing or Pacing(), on_progress, budget
        )
    except sqlite3.Error as exc:
        raise describe_error(db_path, exc, writing=True) from exc
    finally:
        conn.close()


def apply_retention(conn: sqlite3.Connection, policy: Retention, db_label: str) -> PruneResult:
    """Apply a run's ``keep_runs``/``keep_days`` on the writer's connection, as it starts.

    Foreign keys are switched off for the prune (so nothing cascades into an application's
    tables) and back on after; the run that is starting is live and never deleted. A
    failure is logged and the run goes on: retention must never stop a run from recording.
    """
    (fk,) = conn.execute("PRAGMA foreign_keys").fetchone()
    conn.execute("PRAGMA foreign_keys = OFF")
    try:
        plan = plan_prune(conn, policy, count_rows=False)
        if not plan.runs and not plan.orphans:
            return PruneResult(plan)
        # Bounded: the writer does not beat while it prunes, and a first prune of a large
        # file could outlast the run's lease. What is left is finished by later runs.
        result = execute(conn, PruneResult(plan), _tables(conn), Pacing(), budget=START_BUDGET_S)
        log.info(
            "%s: retention deleted %d old run(s) (%s)",
            db_label,
            result.deleted.get("pipeline_runs", 0),
            ", ".join(f"{t} {n}" for t, n in result.deleted.items()),
        )
        return result
    except sqlite3.Error as exc:
        log.warning("%s: retention failed, nothing more deleted (%s)", db_label, exc)
        return PruneResult(PrunePlan())
    finally:
        conn.execute(f"PRAGMA foreign_keys = {'ON' if fk else 'OFF'}")


def file_bytes(db_path: str | Path) -> int:
    """The database file's size plus its ``-wal``, in bytes."""
    path = Path(db_path)
    total = path.stat().st_size if path.exists() else 0
    wal = path.with_name(path.name + "-wal")
    return total + (wal.stat().st_size if wal.exists() else 0)


def vacuum(db_path: str | Path, *, live_ok: bool = False) -> tuple[int, int]:
    """Give the space of deleted rows back to the file system; (bytes before, after).

    A file with ``auto_vacuum = INCREMENTAL`` is shrunk in bounded steps (safe beside a live
    run). Any other file needs a full ``VACUUM``, which holds the write lock for the whole
    rewrite (seconds for gigabytes), so it is refused while a run is live.

    Raises:
        DatabaseError: a run is live and the file needs a full VACUUM, or it cannot be written.
    """
    before = file_bytes(db_path)
    conn = _connect(db_path)
    try:
        (mode,) = conn.execute("PRAGMA auto_vacuum").fetchone()
        if int(mode) == 2:  # incremental: free pages go back a batch at a time
            incremental_vacuum(conn, Pacing())
        else:
            live = conn.execute(
                f"SELECT id FROM pipeline_runs WHERE status IN {sql_in(ACTIVE)} "
                f"AND NOT {stale_sql()} LIMIT 1"
            ).fetchone()
            if live is not None and not live_ok:
                raise DatabaseError(
                    f"{db_path}: run {live[0]} is live, and VACUUM would block its writer for "
                    "the whole rewrite; run it once no run is writing (or set "
                    "`PRAGMA auto_vacuum = INCREMENTAL` and VACUUM once, then vacuum any time)"
                )
            conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    except sqlite3.Error as exc:
        raise describe_error(db_path, exc, writing=True) from exc
    finally:
        conn.close()
    return before, file_bytes(db_path)


def describe_ids(ids: Iterable[int], most: int = 10) -> str:
    """``1, 2, 3 ... (+7 more)``: run ids for one line."""
    shown = list(ids)
    text = ", ".join(str(i) for i in shown[:most])
    return text + (f" ... (+{len(shown) - most} more)" if len(shown) > most else "")


def age_cutoff(age: timedelta) -> str:
    """The ISO time ``age`` ago (UTC), for messages."""
    return (datetime.now(UTC) - age).isoformat(timespec="seconds")


@dataclass(frozen=True, slots=True)
class TableSize:
    """Rows and bytes of one of pipeloom's tables (its indexes' pages included)."""

    table: str
    rows: int
    bytes: int | None
    """None when SQLite was built without the ``dbstat`` table (then only the file's size is
    known)."""


def table_sizes(db_path: str | Path) -> list[TableSize]:
    """Rows and bytes per pipeloom table, read-only (``dbstat`` when SQLite has it).

    Counting rows reads each table's smallest index: about a second for 10 million task rows.

    Raises:
        DatabaseError: the file is missing or not SQLite.
    """
    from pipeloom.db import connect_readonly

    conn = connect_readonly(Path(db_path))
    try:
        conn.execute("BEGIN")
        objects = dict(
            conn.execute(
                "SELECT name, tbl_name FROM sqlite_master WHERE tbl_name IN "
                f"({','.join('?' * len(PIPELOOM_TABLES))})",
                PIPELOOM_TABLES,
            ).fetchall()
        )
        tables = sorted({str(t) for t in objects.values()})
        sizes: dict[str, int] | None = {}
        try:
            for name, pages in conn.execute(
                "SELECT name, sum(pgsize) FROM dbstat GROUP BY name"
            ).fetchall():
                owner = objects.get(name)
                if owner is not None and sizes is not None:
                    sizes[owner] = sizes.get(owner, 0) + int(pages)
        except sqlite3.OperationalError:  # SQLite built without SQLITE_ENABLE_DBSTAT_VTAB
            sizes = None
        return [
            TableSize(
                table,
                int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]),
                None if sizes is None else sizes.get(table, 0),
            )
            for table in tables
        ]
    except sqlite3.DatabaseError as exc:
        raise describe_error(db_path, exc) from exc
    finally:
        conn.close()
