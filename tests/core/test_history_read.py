"""Reading run history back with `pipeloom.history` (what ``pipeloom status`` is built on)."""

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from pipeloom.errors import SchemaOutdatedError
from pipeloom.history import (
    HistoryError,
    HistoryReader,
    RunNotFoundError,
    TaskChanges,
    TaskNotFoundError,
    get_run,
    get_task,
    list_runs,
    open_history,
    run_tasks,
    task_attempts,
    task_logs,
)
from tests._harness import make_run
from tests.cli._cli_support import make_seed_layout


def record(db: Path, n: int, failing: tuple[int, ...] = ()) -> int:
    result = make_run(db, n, failing, name="t", run_name="hist")
    assert result.run_id is not None
    return result.run_id


def test_readers_give_runs_tasks_attempts_and_logs_back(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    first = record(db, 2)
    second = record(db, 4, failing=(3,))
    before = db.read_bytes()
    conn = open_history(db)
    try:
        latest = get_run(conn)
        assert latest is not None and latest.id == second
        assert (latest.status, latest.counts, latest.failed) == (
            "error",
            {"done": 3, "error": 1},
            1,
        )
        assert latest.finished == latest.tasks_total == 4 and not latest.active
        assert [r.id for r in list_runs(conn)] == [second, first]
        older = get_run(conn, first)
        assert older is not None and older.counts == {"done": 2}
        assert [t.task_id for t in run_tasks(conn, second)] == [3, 1, 2, 4]  # failures first
        assert [t.task_id for t in run_tasks(conn, second, limit=2)] == [3, 1]
        bad = get_task(conn, second, 3)
        assert (
            bad.status == "error" and bad.error is not None and "ValueError: t-3 broke" in bad.error
        )
        assert task_attempts(conn, second, 3) == [] and task_logs(conn, second, 3) == []
        with pytest.raises(TaskNotFoundError) as missing_task:
            get_task(conn, second, 9)
        assert (missing_task.value.first, missing_task.value.last) == (1, 4)
        with pytest.raises(RunNotFoundError) as missing_run:
            get_run(conn, 7)
        assert (missing_run.value.first, missing_run.value.last) == (first, second)
        changes = TaskChanges(conn, second)
        changes.start()
        assert changes.changed() == []  # a finished run: nothing left to change
    finally:
        conn.close()
    assert db.read_bytes() == before  # reading never writes


def test_open_history_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(HistoryError, match="no such database file"):
        open_history(tmp_path / "absent.db")
    assert not (tmp_path / "absent.db").exists()
    plain = tmp_path / "plain.db"
    sqlite3.connect(plain).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(HistoryError, match="holds no pipeloom runs"):
        open_history(plain)
    old = tmp_path / "old.db"
    make_seed_layout(old)  # pipeloom 0.0.7's single-run task_runs table
    with pytest.raises(SchemaOutdatedError, match="pipeloom db upgrade"):
        open_history(old)


def test_reading_history_imports_neither_rich_nor_typer() -> None:
    code = (
        "import sys, pipeloom.history; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'rich', 'typer'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_a_snapshot_reads_only_inside_its_block(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    run_id = record(db, 3, failing=(2,))
    with HistoryReader(db) as reader:
        with reader.snapshot() as snap:
            run = snap.run()
            assert run is not None and run.id == run_id
            assert [t.task_id for t in snap.tasks(run_id)] == [2, 1, 3]
            assert snap.task(run_id, "t-2").task_id == 2  # by name when no key, unique
            with pytest.raises(HistoryError, match="do not nest"), reader.snapshot():
                pass
        with pytest.raises(HistoryError, match="block has ended"):
            snap.run()
