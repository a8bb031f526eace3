"""`--executor` on the CLI: the demo and `pipeloom run` pick where tasks run."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from typer.testing import CliRunner

from pipeloom_cli.app import app

runner = CliRunner()


def test_demo_runs_on_processes(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    args = ["demo", "--db", str(db), "-n", "6", "--steps", "2", "--delay", "0", "-e", "processes"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    conn = sqlite3.connect(db)
    try:
        assert conn.execute(
            "SELECT status, count(*) FROM task_runs GROUP BY status"
        ).fetchall() == [("done", 6)]
    finally:
        conn.close()


def test_an_unknown_executor_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--db", str(tmp_path / "x.db"), "--executor", "gpu"])
    assert result.exit_code == 2
    assert "--executor gpu: use one of threads, processes, async" in result.output
    assert not (tmp_path / "x.db").exists()


def test_a_dask_address_with_another_executor_is_refused(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["demo", "--db", str(tmp_path / "x.db"), "-e", "threads", "--dask-address", "tcp://h:1"],
    )
    assert result.exit_code == 2
    assert "only the dask executor takes an address" in result.output
