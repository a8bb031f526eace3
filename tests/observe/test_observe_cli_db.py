from __future__ import annotations

import shutil
import socket
import sqlite3
from pathlib import Path

import pytest
from sqlite_utils import Database
from typer.testing import CliRunner

from pipeloom.schema import SCHEMA_VERSION
from pipeloom_cli.app import app
from pipeloom_observe.migrations import migrations
from tests.observe._observe_support import make_seed_db, sha256

runner = CliRunner()


def migration_names() -> list[str]:
    return [m.name for m in migrations.pending(Database(memory=True))]


def one_error_line(output: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("Error: "), output
    return lines[0]


def test_info_describes_a_run_database(run_db: Path) -> None:
    before = sha256(run_db)
    result = runner.invoke(app, ["db", "info", str(run_db)])
    assert result.exit_code == 0, result.output
    assert f"file:            {run_db}" in result.output
    assert "journal mode:    wal" in result.output
    assert f"schema version:  {SCHEMA_VERSION}" in result.output
    assert "runs:            2" in result.output
    assert "tasks:           8 (done 7, error 1)" in result.output
    # Core created this file at the current version: every migration is in effect.
    assert "applied:         " + ", ".join(migration_names()) in result.output
    assert "pending:         none" in result.output
    assert sha256(run_db) == before


def test_upgrade_prints_what_it_applied_then_nothing(tmp_path: Path) -> None:
    path = tmp_path / "seed.db"
    make_seed_db(path, rows=100)

    result = runner.invoke(app, ["db", "upgrade", str(path)])
    assert result.exit_code == 0, result.output
    assert [f"applied {name}" for name in migration_names()] == result.output.splitlines()[:-1]
    assert result.output.splitlines()[-1] == f"{path}: upgraded to schema version {SCHEMA_VERSION}"

    again = runner.invoke(app, ["db", "upgrade", str(path)])
    assert again.exit_code == 0
    assert again.output.strip() == f"{path}: already at schema version {SCHEMA_VERSION}"

    info = runner.invoke(app, ["db", "info", str(path)])
    assert "applied:         " + ", ".join(migration_names()) in info.output
    assert "pending:         none" in info.output
    assert "runs:            1" in info.output
    assert "tasks:           100" in info.output
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM task_runs").fetchone() == (100,)
    conn.close()


def test_info_on_an_old_layout_says_how_to_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "seed.db"
    make_seed_db(path, rows=4)
    result = runner.invoke(app, ["db", "info", str(path)])
    assert result.exit_code == 0, result.output
    assert "schema version:  0" in result.output
    assert f"pipeloom db upgrade {path}" in result.output


@pytest.mark.parametrize("command", ["info", "upgrade"])
def test_a_missing_file_is_one_line_and_not_created(tmp_path: Path, command: str) -> None:
    path = tmp_path / "typo.db"
    result = runner.invoke(app, ["db", command, str(path)])
    assert result.exit_code == 2
    assert "no such database file" in one_error_line(result.output)
    assert not path.exists()


@pytest.mark.parametrize("command", ["info", "upgrade"])
def test_a_file_that_is_not_sqlite_is_one_line(tmp_path: Path, command: str) -> None:
    path = tmp_path / "report.db"
    path.write_text("id,name\n1,a\n" * 100)
    result = runner.invoke(app, ["db", command, str(path)])
    assert result.exit_code == 2
    assert "is not a SQLite database" in one_error_line(result.output)
    assert path.read_text().startswith("id,name")


def test_observe_refuses_a_missing_file_without_creating_it(tmp_path: Path) -> None:
    path = tmp_path / "typo.db"
    result = runner.invoke(app, ["observe", str(path), "--no-open"])
    assert result.exit_code == 2
    assert "no such database file" in one_error_line(result.output)
    assert not path.exists()


def test_observe_refuses_a_file_that_is_not_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    path.write_text("not a database\n" * 100)
    result = runner.invoke(app, ["observe", str(path), "--no-open"])
    assert result.exit_code == 2
    assert "is not a SQLite database" in one_error_line(result.output)


def test_observe_refuses_metadata_that_is_not_a_mapping(tmp_path: Path, run_db: Path) -> None:
    path = tmp_path / "nightly.db"
    shutil.copy(run_db, path)
    extra = tmp_path / "extra.yml"
    extra.write_text("- just\n- a list\n")
    result = runner.invoke(app, ["observe", str(path), "--no-open", "--metadata", str(extra)])
    assert result.exit_code == 2
    assert "must be a mapping" in one_error_line(result.output)


def test_observe_on_a_port_in_use_is_one_line(run_db: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["observe", str(run_db), "--port", str(port), "--no-open"])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in one_error_line(result.output)
