import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeloom_cli.app import app
from tests._harness import query
from tests.cli._cli_support import PIPELINE_FILE, write

runner = CliRunner()


@pytest.fixture(autouse=True)
def _restore_imports() -> Iterator[None]:
    """Targets are imported into this process: undo their sys.path and sys.modules changes."""
    path, modules = list(sys.path), set(sys.modules)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        del sys.modules[name]


@pytest.fixture
def pipeline_file(tmp_path: Path) -> Path:
    return write(tmp_path / "jobs" / "etl.py", PIPELINE_FILE)


def run_params(db: Path) -> dict[str, object]:
    ((params,),) = query(db, "SELECT params FROM pipeline_runs")
    return dict(json.loads(params))


def test_file_target_runs_the_pipeline_with_coerced_args(
    pipeline_file: Path, tmp_path: Path
) -> None:
    db = tmp_path / "out.db"
    result = runner.invoke(
        app,
        [
            "run",
            f"{pipeline_file}:main",
            "--arg",
            "n=4",
            "--arg",
            f"db={db}",
            "--arg",
            "ratio=0.5",
            "--arg",
            "label=eu-west",
        ],
    )
    assert result.exit_code == 0, result.output
    assert query(db, "SELECT status, count(*) FROM task_runs GROUP BY status") == [("done", 4)]
    params = run_params(db)
    assert params == {"n": 4, "fail": False, "ratio": 0.5, "label": "eu-west", "db": "PosixPath"}


@pytest.mark.parametrize("text", ["true", "yes", "1", "On"])
def test_bool_args_accept_the_usual_spellings_and_failed_tasks_exit_1(
    pipeline_file: Path, tmp_path: Path, text: str
) -> None:
    db = tmp_path / "f.db"
    result = runner.invoke(
        app,
        [
            "run",
            f"{pipeline_file}:main",
            "--arg",
            "n=2",
            "--arg",
            f"db={db}",
            "--arg",
            f"fail={text}",
        ],
    )
    assert result.exit_code == 1, result.output
    assert query(db, "SELECT task_id, status FROM task_runs ORDER BY task_id") == [
        (1, "error"),
        (2, "done"),
    ]


def test_module_target_is_found_from_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "cli_mod_target.py", PIPELINE_FILE)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", "cli_mod_target:main", "--arg", "n=3", "--arg", "db=m.db"])
    assert result.exit_code == 0, result.output
    assert query(tmp_path / "m.db", "SELECT count(*) FROM task_runs") == [(3,)]


def test_file_target_may_import_its_neighbours_and_main_block_does_not_run(
    tmp_path: Path,
) -> None:
    write(tmp_path / "pkg" / "helpers_cli_run.py", "FACTOR = 10\n")
    target = write(
        tmp_path / "pkg" / "job.py",
        f"""
        from pathlib import Path
        from helpers_cli_run import FACTOR

        def main(n: int, out: Path) -> None:
            out.write_text(str(n * FACTOR))

        if __name__ == "__main__":
            Path({str(tmp_path / "ran-as-main")!r}).write_text("yes")
        """,
    )
    out = tmp_path / "out.txt"
    result = runner.invoke(app, ["run", f"{target}:main", "--arg", "n=4", "--arg", f"out={out}"])
    assert result.exit_code == 0, result.output
    assert out.read_text() == "40"
    assert not (tmp_path / "ran-as-main").exists()


def test_hints_from_defaults_optionals_and_async_functions(tmp_path: Path) -> None:
    out = tmp_path / "seen.json"
    target = write(
        tmp_path / "hints.py",
        f"""
        import json
        from typing import Optional

        async def main(count=3, scale: Optional[float] = None, flag: "bool | None" = None, **rest):
            with open({str(out)!r}, "w") as fh:
                json.dump({{"count": count, "scale": scale, "flag": flag, "rest": rest}}, fh)
        """,
    )
    args = ["--arg", "count=7", "--arg", "scale=2.5", "--arg", "flag=no", "--arg", "extra=x"]
    result = runner.invoke(app, ["run", f"{target}:main", *args])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text()) == {
        "count": 7,
        "scale": 2.5,
        "flag": False,
        "rest": {"extra": "x"},
    }


def test_db_and_workers_go_to_a_function_that_takes_them(tmp_path: Path) -> None:
    out = tmp_path / "seen.txt"
    target = write(
        tmp_path / "takes.py",
        f"""
        def main(db, workers):
            with open({str(out)!r}, "w") as fh:
                fh.write(f"{{type(db).__name__}} {{db}} {{workers}}")
        """,
    )
    result = runner.invoke(app, ["run", f"{target}:main", "--db", "x.db", "-w", "3"])
    assert result.exit_code == 0, result.output
    assert out.read_text() == "PosixPath x.db 3"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--arg", "n=abc"], "--arg n=abc: 'abc' is not a valid int"),
        (["--arg", "n=4", "--arg", "fail=maybe"], "--arg fail=maybe: 'maybe' is not a valid bool"),
        (["--arg", "n=4", "--arg", "ratio=half"], "'half' is not a valid float"),
        (["--arg", "n"], "--arg 'n': expected key=value"),
        (["--arg", "=4"], "is not a parameter name"),
        (["--arg", "n=1", "--arg", "n=2"], "--arg n: given twice"),
        (["--arg", "n=4", "--arg", "colour=red"], "has no parameter 'colour'; it takes: n, db"),
        ([], "missing required argument(s) n; pass --arg n=VALUE"),
        (["--arg", "n=4", "--resume"], "--resume: "),
        (["--arg", "n=4", "--workers", "2"], "without a 'workers' parameter"),
    ],
)
def test_argument_mistakes_are_one_line_usage_errors(
    pipeline_file: Path, args: list[str], expected: str
) -> None:
    result = runner.invoke(app, ["run", f"{pipeline_file}:main", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert expected in lines[0]


def test_target_mistakes_name_the_target_and_the_fix(
    pipeline_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "broken_cli_target.py", "import not_a_module_anywhere_xyz\n")
    write(tmp_path / "syntax_cli_target.py", "def main(:\n")
    write(tmp_path / "values_cli_target.py", "LIMIT = 3\ndef main(): pass\ndef other(): pass\n")
    cases = {
        "etl.py": "no function named",
        "missing.py:main": "missing.py does not exist",
        f"{tmp_path / 'jobs'}:main": "jobs is a directory",
        "no_such_module_xyz:main": "no module named 'no_such_module_xyz'",
        f"{pipeline_file}:nope": "has no 'nope'; it defines: main, work",
        "values_cli_target:LIMIT": "LIMIT is a int, not a function or pipeline",
        "values_cli_target:main-x": "is not a Python name",
        "broken_cli_target:main": "raised ModuleNotFoundError: No module named 'not_a_module_any",
        "syntax_cli_target.py:main": "SyntaxError",
    }
    for target, expected in cases.items():
        result = runner.invoke(app, ["run", target])
        assert result.exit_code == 2, (target, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (target, result.stderr)
        assert target in lines[0]
        assert expected in lines[0], (target, lines[0])


def test_an_exception_in_the_target_is_one_line_exit_1_and_vv_shows_it(tmp_path: Path) -> None:
    target = write(tmp_path / "boom.py", "def main():\n    raise KeyError('no such partition')\n")
    result = runner.invoke(app, ["run", f"{target}:main"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {target}:main raised KeyError: 'no such partition' (-vv shows the traceback)"
    ]
    loud = runner.invoke(app, ["run", f"{target}:main", "-vv"])
    assert loud.exit_code == 1
    assert "Traceback" in loud.stderr
    assert "raise KeyError" in loud.stderr


FAKE_PIPELINE = """
    import json
    from pipeloom.engine import RunResult

    class Recorder:
        __pipeloom_pipeline__ = True
        db = None

        def __init__(self, status, stop_reason=None):
            self.status = status
            self.stop_reason = stop_reason

        def run(self, *, db=None, workers=None, resume=False, progress=None, summary_hint=None):
            seen = {{"db": str(db), "workers": workers, "resume": resume, "hint": summary_hint}}
            with open({out!r}, "w") as fh:
                json.dump(seen, fh)
            return RunResult(1, self.status, {{}}, [], 0.1, str(db), stop_reason=self.stop_reason)

    done = Recorder("done")
    failed = Recorder("error")
    stopped = Recorder("cancelled", "sigint")
    failed_then_stopped = Recorder("error", "sigint")
    terminated = Recorder("interrupted", "sigterm")
    lost = Recorder("cancelled", "cluster_lost")
    fail_fast = Recorder("cancelled", "fail_fast")
"""


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("done", 0),
        ("failed", 1),
        ("stopped", 130),
        ("failed_then_stopped", 130),  # a signal decides, whatever else happened
        ("terminated", 143),
        ("lost", 3),
        ("fail_fast", 1),
    ],
)
def test_pipeline_objects_get_db_workers_resume_and_exit_by_their_status(
    tmp_path: Path, name: str, code: int
) -> None:
    out = tmp_path / "seen.json"
    target = write(tmp_path / "pipes.py", FAKE_PIPELINE.format(out=str(out)))
    result = runner.invoke(
        app, ["run", f"{target}:{name}", "--db", "runs.db", "-w", "3", "--resume"]
    )
    assert result.exit_code == code, result.output
    assert json.loads(out.read_text()) == {
        "db": "runs.db",
        "workers": 3,
        "resume": True,
        "hint": "pipeloom observe runs.db",
    }


def test_resume_run_passes_the_run_id_and_arg_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "seen.json"
    target = write(tmp_path / "pipes.py", FAKE_PIPELINE.format(out=str(out)))
    result = runner.invoke(app, ["run", f"{target}:done", "--resume-run", "7"])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["resume"] == 7
    refused = runner.invoke(app, ["run", f"{target}:done", "--arg", "n=1"])
    assert refused.exit_code == 2
    assert "is a pipeline; pass its parameters with --param (--param n=1)" in refused.stderr


def test_a_declarative_pipeline_runs_and_resumes(tmp_path: Path) -> None:
    marker = tmp_path / "fail-c"
    marker.write_text("")
    target = write(
        tmp_path / "decl.py",
        f"""
        import os
        from pipeloom.pipeline import Pipeline

        pipe = Pipeline("decl", db={str(tmp_path / "own.db")!r})

        @pipe.task
        def load(ctx, item):
            if item == "c" and os.path.exists({str(marker)!r}):
                raise RuntimeError("c is not ready")
            return {{"item": item}}

        pipe.map(load, ["a", "b", "c"])
        """,
    )
    db = tmp_path / "decl.db"
    first = runner.invoke(app, ["run", f"{target}:pipe", "--db", str(db), "-w", "2"])
    assert first.exit_code == 1, first.output
    marker.unlink()
    second = runner.invoke(app, ["run", f"{target}:pipe", "--db", str(db), "--resume"])
    assert second.exit_code == 0, second.output
    rows = query(db, "SELECT run_id, status, count(*) FROM task_runs GROUP BY run_id, status")
    assert rows == [(1, "done", 2), (1, "error", 1), (2, "done", 1), (2, "skipped", 2)]
    assert not (tmp_path / "own.db").exists()
    missing = runner.invoke(app, ["run", f"{target}:pipe", "--db", str(db), "--resume-run", "9"])
    assert missing.exit_code == 2
    assert "9" in missing.stderr


def test_v_logs_the_call_and_vv_also_where_the_target_came_from(pipeline_file: Path) -> None:
    args = [
        "run",
        f"{pipeline_file}:main",
        "--arg",
        "n=1",
        "--arg",
        f"db={pipeline_file.parent / 'v.db'}",
    ]
    quiet = runner.invoke(app, args)
    info = runner.invoke(app, [*args, "-v"])
    debug = runner.invoke(app, [*args, "-vv"])
    assert quiet.exit_code == info.exit_code == debug.exit_code == 0
    assert "calling" not in quiet.output
    assert "INFO" in info.output and "calling" in info.output
    assert "DEBUG" not in info.output
    assert "DEBUG" in debug.output
    assert "function main from" in " ".join(debug.output.split())  # Rich may wrap the line
