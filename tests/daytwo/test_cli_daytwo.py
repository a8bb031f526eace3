"""The command line of day two: --param, status showing parameters and --state; real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeloom_cli.app import app
from tests._harness import query
from tests.cli._cli_support import write

PIPE = """
import datetime as dt
from pipeloom import Context, Pipeline

pipe = Pipeline("daily", db="runs.db", workers=1, params={"since": dt.date(2024, 1, 1), "limit": 3})

@pipe.task
def load(ctx: Context, item: str) -> str:
    since = ctx.params["since"]
    assert isinstance(since, dt.date)
    ctx.state.set("loaded_until", since.isoformat())
    return f"{item} since {since} limit {ctx.params['limit']}"

pipe.map(load, ["orders"])
"""


runner = CliRunner()


@pytest.fixture(autouse=True)
def _restore_imports() -> Iterator[None]:
    """Targets are imported into this process: undo their sys.path and sys.modules changes."""
    path, modules = list(sys.path), set(sys.modules)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        del sys.modules[name]


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command in a process of its own, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "pipeloom_cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "160"},
    )


def test_param_state_and_status_from_the_command_line(tmp_path: Path) -> None:
    write(tmp_path / "etl.py", PIPE)
    done = _cli(tmp_path, "run", "etl.py:pipe", "--param", "since=2024-06-01", "--param", "limit=7")
    assert done.returncode == 0, done.stderr
    shown = _cli(tmp_path, "status", "runs.db")
    assert "limit=7, since=2024-06-01" in shown.stdout
    state = json.loads(_cli(tmp_path, "status", "runs.db", "--state", "-f", "json").stdout)
    assert [
        (s["pipeline"], s["key"], s["value"], s["run_id"], s["task_key"]) for s in state["state"]
    ] == [("daily", "loaded_until", "2024-06-01", 1, "load:orders")]


def test_param_mistakes_and_changes_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "etl.py", PIPE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "160")
    first = runner.invoke(app, ["run", "etl.py:pipe", "--param", "limit=7"])
    assert first.exit_code == 0, first.output
    # JSON: the table's width follows the shared console, which an earlier test may have sized
    listed = runner.invoke(app, ["status", "runs.db", "--state", "--format", "json"])
    assert listed.exit_code == 0, listed.output
    state = {e["key"]: e["value"] for e in json.loads(listed.stdout)["state"]}
    assert state["loaded_until"] in ('"2024-01-01"', "2024-01-01")

    bad = runner.invoke(app, ["run", "etl.py:pipe", "--param", "limit=many"])
    assert bad.exit_code == 2
    assert bad.stderr.count("\n") == 1
    assert "parameter limit='many' is not a valid int" in bad.stderr
    assert "declared parameters: limit, since" in bad.stderr

    unknown = runner.invoke(app, ["run", "etl.py:pipe", "--param", "until=2024-07-01"])
    assert unknown.exit_code == 2 and "unknown parameter 'until'" in unknown.stderr

    changed = runner.invoke(app, ["run", "etl.py:pipe", "--resume", "--param", "limit=8"])
    assert changed.exit_code == 2
    assert "run 1 was made with other parameters (limit: 7 -> 8)" in changed.stderr
    forced = runner.invoke(
        app, ["run", "etl.py:pipe", "--resume", "--param", "limit=8", "--allow-param-change"]
    )
    assert forced.exit_code == 0, forced.output

    as_arg = runner.invoke(app, ["run", "etl.py:pipe", "--arg", "since=2024-06-01"])
    assert as_arg.exit_code == 2 and "--param since=2024-06-01" in as_arg.stderr
    lone = runner.invoke(app, ["status", "runs.db", "--pipeline", "daily"])
    assert lone.exit_code == 2 and "--state" in lone.stderr and "--failures" in lone.stderr


ETL = """
from pathlib import Path
from tests.daytwo._tasks import make_etl

pipe = make_etl(Path("runs.db"), ["a.csv", "b.csv"])
"""


def test_rerun_and_from_on_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "etl.py", ETL)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.csv").write_text("1\n")
    (tmp_path / "src" / "b.csv").write_text("2\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))
    assert runner.invoke(app, ["run", "etl.py:pipe"]).exit_code == 0
    again = runner.invoke(
        app, ["run", "etl.py:pipe", "--rerun", "parse:b*", "--rerun", "download:a.csv"]
    )
    assert again.exit_code == 0, again.output
    statuses = dict(
        query(tmp_path / "runs.db", "SELECT task_key, status FROM task_runs WHERE run_id = 2")
    )
    assert statuses == {
        "download:a.csv": "done",
        "download:b.csv": "skipped",
        "parse:a.csv": "done",
        "parse:b.csv": "done",
        "summarise:all parse": "done",
    }
    wrong = runner.invoke(app, ["run", "etl.py:pipe", "--from", "laod"])
    assert wrong.exit_code == 2
    assert "--from 'laod' matches no stage; its stages: download, parse, summarise" in wrong.stderr
