"""``pipeloom status DB --task ID``: one task in full, from a real pipeline's run database."""

import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeloom import Context, Pipeline
from pipeloom.options import RunOptions
from pipeloom_cli.app import app

runner = CliRunner()


def mixed_run(db: Path) -> None:
    """Tasks 1 ok, 2 flaky (fails once, then done), 3 bad (fails twice); 3 logs kept each."""
    pipe = Pipeline("mix", db=db, workers=2, options=RunOptions(task_log_limit=3))
    tries: dict[str, int] = {}

    @pipe.task(retries=1)
    def work(ctx: Context, item: str) -> str:
        tries[item] = tries.get(item, 0) + 1
        for i in range(3):
            ctx.log.info("row batch %d of %s [bold]", i, item)
        logging.getLogger("user.code").warning("user warning for %s", item)
        if item == "flaky" and tries[item] == 1:
            raise ValueError("flaky the first time")
        if item == "bad":
            raise KeyError("bad [red]item[/red]")
        return item.upper()

    pipe.map(work, ["ok", "flaky", "bad"])
    pipe.run(progress=False)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("task") / "mix.db"
    mixed_run(db)
    return db


def test_task_table_shows_row_traceback_attempts_and_logs_as_text(mixed: Path) -> None:
    result = runner.invoke(app, ["status", str(mixed), "--task", "3"], terminal_width=120)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "3 of run 1 (mix)" in out and "work:bad" in out
    assert "Traceback (most recent call last)" in out
    assert "KeyError: 'bad [red]item[/red]'" in out  # printed as written, not as markup
    attempts = out[out.index("Attempts") : out.index("Logs")]
    (row,) = [line for line in attempts.splitlines() if line.split()[:2] == ["1", "error"]]
    assert "KeyError: 'bad" in row
    logs = out[out.index("Logs") :]
    assert "row batch 0 of bad [bold]" in logs and "INFO" in logs
    # 8 records were logged over two attempts (3 by ctx.log, 1 by the user's logger, twice);
    # 3 are kept and the rest counted.
    assert "5 records dropped" in out


def test_task_json_has_the_row_attempts_logs_and_dropped_count(mixed: Path) -> None:
    result = runner.invoke(app, ["status", str(mixed), "--task", "2", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["run"] == {"id": 1, "name": "mix", "status": "error"}
    task = data["task"]
    assert (task["task_id"], task["key"], task["status"], task["attempt"]) == (
        2,
        "work:flaky",
        "done",
        2,
    )
    assert task["result"] == "FLAKY" and task["elapsed"] >= 0
    (attempt,) = data["attempts"]
    assert (attempt["attempt"], attempt["status"]) == (1, "error")
    assert "ValueError: flaky the first time" in attempt["error"]
    kept = [log for log in data["logs"] if not log["dropped"]]
    assert [log["message"] for log in kept] == [f"row batch {i} of flaky [bold]" for i in range(3)]
    assert data["logs_dropped"] == 5
    assert {"created_at", "level", "logger", "message", "attempt"} <= set(data["logs"][0])


def test_unknown_task_is_one_line_naming_the_run_and_the_id(mixed: Path) -> None:
    result = runner.invoke(app, ["status", str(mixed), "--task", "99"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error: --task 99: no such task in run 1 (mix) of ")
    assert "task ids are 1..3" in lines[0]
    both = runner.invoke(app, ["status", str(mixed), "--task", "1", "--watch"])
    assert both.exit_code == 2 and "drop --watch" in both.stderr


def test_task_defaults_to_the_newest_run_and_follows_run(tmp_path: Path) -> None:
    db = tmp_path / "two.db"
    mixed_run(db)
    mixed_run(db)
    newest = json.loads(
        runner.invoke(app, ["status", str(db), "--task", "1", "--format", "json"]).stdout
    )
    older = json.loads(
        runner.invoke(
            app, ["status", str(db), "--task", "1", "--run", "1", "--format", "json"]
        ).stdout
    )
    assert newest["run"]["id"] == 2 and older["run"]["id"] == 1
    assert newest["task"]["started_at"] > older["task"]["started_at"]
