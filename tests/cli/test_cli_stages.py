"""`pipeloom status` groups a run with stages by stage."""

import json
from pathlib import Path

from typer.testing import CliRunner

from pipeloom import Context, Pipeline
from pipeloom_cli.app import app

runner = CliRunner()


def _staged_run(db: Path) -> None:
    pipe = Pipeline("etl", db=db, workers=2)

    @pipe.task
    def parse(ctx: Context, n: int) -> int:
        if n == 2:
            raise ValueError("bad row")
        return n

    @pipe.task
    def load(ctx: Context, n: int) -> int:
        return n

    pipe.map(load, pipe.map(parse, [1, 2, 3]))
    pipe.run(progress=False)


def test_status_shows_one_line_per_stage(tmp_path: Path) -> None:
    db = tmp_path / "etl.db"
    _staged_run(db)
    result = runner.invoke(app, ["status", str(db)])
    assert result.exit_code == 0, result.output
    assert "parse: 3/3 finished: done 2, error 1" in result.output
    assert "load: 3/3 finished: done 2, upstream_failed 1" in result.output

    as_json = runner.invoke(app, ["status", str(db), "--format", "json"])
    assert json.loads(as_json.output)["stages"] == {
        "parse": {"done": 2, "error": 1},
        "load": {"done": 2, "upstream_failed": 1},
    }
