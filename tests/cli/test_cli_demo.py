import json
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeloom.schema import SCHEMA_VERSION
from pipeloom_cli.app import app
from tests._harness import query
from tests.cli._cli_support import make_seed_layout

runner = CliRunner()

FAST = ["--delay", "0", "--seed", "7"]


def test_demo_records_every_task_and_ends_with_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    db = Path("demo.db")
    result = runner.invoke(app, ["demo", "--db", str(db), "-n", "5", *FAST])
    assert result.exit_code == 0, result.output
    assert query(db, "SELECT status, count(*) FROM task_runs GROUP BY status") == [("done", 5)]
    ((name, status, params),) = query(db, "SELECT name, status, params FROM pipeline_runs")
    assert (name, status) == ("demo", "done")
    assert json.loads(params)["seed"] == 7
    tail = result.output.strip().splitlines()[-12:]
    assert any("pipeloom observe demo.db" in line for line in tail)
    assert any("done" in line and "5" in line for line in tail)


def test_demo_default_database_is_wal_demo_db_in_wal_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["demo", "-n", "2", *FAST])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "wal_demo.db").is_file()
    assert query(tmp_path / "wal_demo.db", "PRAGMA journal_mode") == [("wal",)]


def test_no_wal_uses_the_rollback_journal(tmp_path: Path) -> None:
    db = tmp_path / "plain.db"
    result = runner.invoke(app, ["demo", "--db", str(db), "-n", "2", "--no-wal", *FAST])
    assert result.exit_code == 0, result.output
    assert query(db, "PRAGMA journal_mode") == [("delete",)]


def test_fail_rate_fails_that_share_of_tasks_and_exits_1(tmp_path: Path) -> None:
    db = tmp_path / "f.db"
    result = runner.invoke(app, ["demo", "--db", str(db), "-n", "10", "--fail-rate", "0.3", *FAST])
    assert result.exit_code == 1, result.output
    rows = query(db, "SELECT message FROM task_runs WHERE status = 'error'")
    assert len(rows) == 3
    assert all("simulated failure" in r[0] for r in rows)
    assert query(db, "SELECT status FROM pipeline_runs") == [("error",)]


def test_same_seed_fails_the_same_tasks(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    args = ["demo", "--db", str(db), "-n", "12", "--fail-rate", "0.25", *FAST]
    assert runner.invoke(app, args).exit_code == 1
    assert runner.invoke(app, args).exit_code == 1
    failed = query(
        db, "SELECT run_id, task_id FROM task_runs WHERE status = 'error' ORDER BY task_id"
    )
    first = [t for r, t in failed if r == 1]
    second = [t for r, t in failed if r == 2]
    assert len(first) == 3
    assert first == second


def test_workers_steps_and_task_count_are_applied(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    result = runner.invoke(
        app,
        ["demo", "--db", str(db), "--num-tasks", "4", "--workers", "3", "--steps", "4", *FAST],
    )
    assert result.exit_code == 0, result.output
    assert query(db, "SELECT workers, tasks_total FROM pipeline_runs") == [(3, 4)]
    assert query(db, "SELECT DISTINCT step, total FROM task_runs") == [(4, 4)]


def test_running_again_adds_a_run_and_keeps_the_old_one(tmp_path: Path) -> None:
    db = tmp_path / "again.db"
    for _ in range(2):
        assert runner.invoke(app, ["demo", "--db", str(db), "-n", "3", *FAST]).exit_code == 0
    assert query(db, "SELECT run_id, count(*) FROM task_runs GROUP BY run_id") == [(1, 3), (2, 3)]


def test_verbose_shows_info_logs_and_quiet_does_not(tmp_path: Path) -> None:
    quiet = runner.invoke(app, ["demo", "--db", str(tmp_path / "q.db"), "-n", "2", *FAST])
    loud = runner.invoke(app, ["demo", "--db", str(tmp_path / "l.db"), "-n", "2", "-v", *FAST])
    assert quiet.exit_code == loud.exit_code == 0
    assert "task-1 done" not in quiet.output
    assert "task-1 done" in loud.output


def test_log_file_gets_plain_timestamped_lines(tmp_path: Path) -> None:
    log = tmp_path / "demo.log"
    result = runner.invoke(
        app, ["demo", "--db", str(tmp_path / "d.db"), "-n", "2", "-v", "-l", str(log), *FAST]
    )
    assert result.exit_code == 0, result.output
    text = log.read_text()
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO .*task-1 done", text, re.M)
    assert "\x1b" not in text


def test_log_file_in_a_missing_folder_is_a_usage_error(tmp_path: Path) -> None:
    log = tmp_path / "nope" / "demo.log"
    result = runner.invoke(app, ["demo", "--db", str(tmp_path / "d.db"), "-l", str(log)])
    assert result.exit_code == 2
    assert "--log-file" in result.stderr
    assert not (tmp_path / "d.db").exists()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.write_text("not a database, just text\n"), "is not a SQLite database"),
        (lambda p: None, "does not exist"),
    ],
    ids=["directory", "not-sqlite", "missing-folder"],
)
def test_bad_database_path_is_one_line_and_exit_2(
    tmp_path: Path, make: Callable[[Path], object], expected: str
) -> None:
    db = tmp_path / "x.db"
    if expected == "does not exist":
        db = tmp_path / "missing" / "x.db"
    make(db)
    result = runner.invoke(app, ["demo", "--db", str(db), "-n", "2", *FAST])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error: ")
    assert str(db) in lines[0]
    assert expected in lines[0]
    assert "Traceback" not in result.output


def test_vv_adds_the_traceback_to_a_user_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--db", str(tmp_path), "-vv"])
    assert result.exit_code == 2
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ")


@pytest.mark.parametrize(
    "args",
    [["--fail-rate", "1.5"], ["-n", "-1"], ["-w", "0"], ["--steps", "0"], ["--delay", "-1"]],
)
def test_out_of_range_options_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    result = runner.invoke(app, ["demo", "--db", str(tmp_path / "d.db"), *args])
    assert result.exit_code == 2
    assert not (tmp_path / "d.db").exists()


def test_a_file_with_the_seed_layout_is_upgraded_before_the_demo(tmp_path: Path) -> None:
    db = tmp_path / "seed.db"
    make_seed_layout(db)
    result = runner.invoke(app, ["demo", "--db", str(db), "-n", "2", *FAST])
    assert result.exit_code == 0, result.output
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT version FROM pipeloom_schema").fetchone() == (SCHEMA_VERSION,)
        assert conn.execute("PRAGMA user_version").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM task_runs WHERE name = 'old'").fetchone() == (1,)
    finally:
        conn.close()


def test_an_in_memory_demo_records_nothing_and_offers_no_browse_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["demo", "--db", ":memory:", "-n", "3", *FAST])
    assert result.exit_code == 0, result.output
    assert "pipeloom observe" not in result.output
    assert list(tmp_path.iterdir()) == []
