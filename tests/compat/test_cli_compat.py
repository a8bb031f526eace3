"""0.0.7's CLI: ``demo -s``, ``init-db`` and ``examples etl|csv|file-writer|download``."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pipeloom import RunResult
from pipeloom_cli.app import app
from tests._harness import query
from tests.compat.test_legacy_upgrade import OLD_ROWS, original_file

runner = CliRunner()


def test_demo_accepts_store_task_status_and_records_the_run(tmp_path: Path) -> None:
    db = tmp_path / "wal_demo.db"
    for flag in ("-s", "--store-task-status"):
        result = runner.invoke(
            app, ["demo", "--db", str(db), "--num-tasks", "3", flag, "--delay", "0"]
        )
        assert result.exit_code == 0, result.output
    assert query(db, "SELECT run_id, status, COUNT(*) FROM task_runs GROUP BY 1, 2") == [
        (1, "done", 3),
        (2, "done", 3),
    ]
    help_text = runner.invoke(app, ["demo", "--help"]).output
    assert "-s" in help_text and "recorded" in help_text


def test_readme_quickstart_command(tmp_path: Path) -> None:
    # README.md "Quickstart" (plus --delay 0, a flag of this version, to keep the test fast).
    db = tmp_path / "wal_demo.db"
    result = runner.invoke(
        app, ["demo", "--db", str(db), "--num-tasks", "10", "-vv", "--delay", "0"]
    )
    assert result.exit_code == 0, result.output
    assert query(db, "SELECT COUNT(*) FROM task_runs WHERE status = 'done'") == [(10,)]


def test_init_db_creates_the_tables_and_keeps_other_tables(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE mine (x INTEGER)")
    conn.execute("INSERT INTO mine VALUES (7)")
    conn.commit()
    conn.close()
    result = runner.invoke(app, ["init-db", str(db)])
    assert result.exit_code == 0, result.output
    assert f"{db}: pipeloom tables ready" in result.output
    names = {r[0] for r in query(db, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"mine", "pipeline_runs", "task_runs"} <= names
    assert query(db, "SELECT x FROM mine") == [(7,)]
    again = runner.invoke(app, ["init-db", "--db", str(db)])  # 0.0.7's spelling, idempotent
    assert again.exit_code == 0, again.output


def test_init_db_upgrades_an_original_file(tmp_path: Path) -> None:
    db = original_file(tmp_path / "old.db", OLD_ROWS)
    result = runner.invoke(app, ["init-db", str(db)])
    assert result.exit_code == 0, result.output
    assert query(db, "SELECT run_id, task_id FROM task_runs ORDER BY 2") == [(1, 1), (1, 2), (1, 3)]


def test_init_db_refuses_a_file_that_is_not_sqlite(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database\n" * 50)
    result = runner.invoke(app, ["init-db", str(notes)])
    assert result.exit_code == 2
    assert "notes.txt" in result.output and "not a" in result.output
    assert notes.read_text() == "not a database\n" * 50


@pytest.mark.parametrize(
    ("command", "sql", "expected"),
    [
        (
            ["csv", "--files", "3", "--rows", "40"],
            "SELECT COUNT(*), COUNT(DISTINCT source) FROM customers",
            [(120, 3)],
        ),
        (
            ["etl"],
            "SELECT (SELECT COUNT(*) FROM posts), (SELECT SUM(completed) FROM todos)",
            [(100, 66)],
        ),
        (
            ["file-writer", "--sizes", "1000,70000"],
            "SELECT name, size FROM files ORDER BY name",
            [("file-01-1000.bin", 1000), ("file-02-70000.bin", 70000)],
        ),
        (
            ["download"],
            "SELECT COUNT(*), SUM(size) FROM downloads",
            [(4, (64 + 128 + 256 + 512) << 10)],
        ),
    ],
    ids=["csv", "etl", "file-writer", "download"],
)
def test_examples_run_offline_and_store_their_rows(
    tmp_path: Path, command: list[str], sql: str, expected: list[tuple[object, ...]]
) -> None:
    db = tmp_path / "example.db"
    result = runner.invoke(
        app,
        [
            "examples",
            *command,
            "--db",
            str(db),
            *(
                ["--dir", str(tmp_path / "files")]
                if command[0] in ("csv", "file-writer", "download")
                else []
            ),
        ],
    )
    assert result.exit_code == 0, result.output
    assert query(db, sql) == expected
    assert query(db, "SELECT status, COUNT(*) FROM task_runs GROUP BY 1")[0][0] == "done"
    assert query(db, "SELECT COUNT(*) FROM task_runs WHERE status <> 'done'") == [(0,)]


def test_download_example_reads_a_given_url(tmp_path: Path) -> None:
    from pipeloom_cli.commands.examples import _serve

    with _serve({"/a.bin": b"x" * 5000}) as base:
        result = runner.invoke(
            app,
            [
                "examples",
                "download",
                "--db",
                str(tmp_path / "d.db"),
                "--dir",
                str(tmp_path),
                "--url",
                f"{base}/a.bin",
            ],
        )
    assert result.exit_code == 0, result.output
    assert query(tmp_path / "d.db", "SELECT file, url, size FROM downloads") == [
        ("a.bin", f"{base}/a.bin", 5000)
    ]
    assert (tmp_path / "a.bin").read_bytes() == b"x" * 5000


def test_etl_example_with_an_unreachable_url_fails_with_exit_1(tmp_path: Path) -> None:
    from pipeloom_cli.commands.examples import _serve

    with _serve({}) as base:  # answers 404 for everything
        result = runner.invoke(
            app, ["examples", "etl", "--db", str(tmp_path / "e.db"), "--url", base]
        )
    assert result.exit_code == 1
    assert query(tmp_path / "e.db", "SELECT COUNT(*) FROM task_runs WHERE status = 'error'") == [
        (2,)
    ]


def test_patching_0_0_7s_module_level_names_takes_effect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 0.0.7's tests replaced pipeloom.cli.run_pipeline / setup_logging; that module is the
    # pipeloom_cli package now, and the commands look both names up there when they run.
    calls: list[tuple[str, tuple[Any, ...]]] = []

    def fake_setup_logging(verbose: int, log_file: Path | None = None) -> logging.Logger:
        calls.append(("setup_logging", (verbose, log_file)))
        return logging.getLogger("pipeloom")

    def fake_run_pipeline(tasks: Any, db_path: Any, **kwargs: Any) -> RunResult:
        calls.append(("run_pipeline", (len(list(tasks)), db_path, kwargs["workers"])))
        return RunResult(None, "done", {"done": 3}, [], 0.0, str(db_path))

    monkeypatch.setattr("pipeloom_cli.setup_logging", fake_setup_logging)
    monkeypatch.setattr("pipeloom_cli.run_pipeline", fake_run_pipeline)
    db, log_file = tmp_path / "wal_demo.db", tmp_path / "demo.log"
    result = runner.invoke(
        app, ["demo", "--db", str(db), "-n", "3", "-w", "2", "-vv", "-l", str(log_file)]
    )
    assert result.exit_code == 0, result.output
    assert calls == [("setup_logging", (2, log_file)), ("run_pipeline", (3, db, 2))]
    assert not db.exists()  # the real run_pipeline never ran
