import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.cells import cell_len
from typer.testing import CliRunner

from pipeloom import Context, MsgTaskStarted, Pipeline, TaskDef, TaskQueue, run_pipeline, utc_now
from pipeloom.logs import console
from pipeloom.schema import SCHEMA_VERSION
from pipeloom_cli.app import app
from tests.cli._cli_support import make_run, make_seed_layout
from tests.e2e._cli_e2e_support import clean_env, pipeloom_command

runner = CliRunner()


@pytest.fixture
def history(tmp_path: Path) -> Path:
    """Two runs: run 1 all done (3 tasks), run 2 with tasks 2 and 4 failed (5 tasks)."""
    db = tmp_path / "hist.db"
    make_run(db, 3)
    make_run(db, 5, failing=(2, 4))
    return db


def as_json(args: list[str]) -> dict[str, object]:
    result = runner.invoke(app, ["status", *args, "--format", "json"])
    assert result.exit_code == 0, result.output
    data: dict[str, object] = json.loads(result.stdout)
    return data


def test_table_shows_the_latest_run_with_failures_first(history: Path) -> None:
    result = runner.invoke(app, ["status", str(history)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "2 (fixture)" in out
    assert "5/5 finished: done 3, error 2" in out
    assert "tasks/s" in out
    rows = [line for line in out.splitlines() if "job-" in line]
    assert [r.split()[1] for r in rows] == ["job-2", "job-4", "job-1", "job-3", "job-5"]
    assert "ValueError: job-2 broke" in out


def test_json_has_the_run_counts_throughput_and_every_task(history: Path) -> None:
    data = as_json([str(history)])
    run = data["run"]
    assert isinstance(run, dict)
    assert (run["id"], run["status"], run["counts"]) == (2, "error", {"done": 3, "error": 2})
    assert run["finished"] == run["tasks_total"] == 5
    assert run["elapsed"] > 0 and run["throughput"] > 0
    tasks = data["tasks"]
    assert isinstance(tasks, list)
    assert [(t["task_id"], t["status"]) for t in tasks] == [
        (2, "error"),
        (4, "error"),
        (1, "done"),
        (3, "done"),
        (5, "done"),
    ]
    assert "Traceback" in tasks[0]["error"]


def test_run_option_picks_an_older_run_and_db_option_works(history: Path) -> None:
    data = as_json(["--db", str(history), "--run", "1"])
    run = data["run"]
    assert isinstance(run, dict)
    assert (run["id"], run["status"], run["counts"]) == (1, "done", {"done": 3})


def test_runs_lists_recent_runs_newest_first(history: Path) -> None:
    result = runner.invoke(app, ["status", str(history), "--runs"])
    assert result.exit_code == 0, result.output
    assert "Recent runs" in result.output
    data = as_json([str(history), "--runs"])
    runs = data["runs"]
    assert isinstance(runs, list)
    assert [(r["id"], r["status"]) for r in runs] == [(2, "error"), (1, "done")]
    limited = as_json([str(history), "--runs", "--limit", "1"])["runs"]
    assert isinstance(limited, list) and len(limited) == 1


def test_limit_caps_the_tasks_and_says_how_many_are_hidden(history: Path) -> None:
    data = as_json([str(history), "--limit", "2"])
    assert len(data["tasks"]) == 2  # type: ignore[arg-type]
    assert data["tasks_not_shown"] == 3
    table = runner.invoke(app, ["status", str(history), "--limit", "2"])
    assert "and 3 more" in table.output


def test_default_database_is_pipeloom_db_in_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_run(tmp_path / "pipeloom.db", 2)
    monkeypatch.chdir(tmp_path)
    data = as_json([])
    assert data["db"] == "pipeloom.db"


def test_status_never_changes_or_creates_a_file(history: Path, tmp_path: Path) -> None:
    before = history.read_bytes()
    assert runner.invoke(app, ["status", str(history)]).exit_code == 0
    assert history.read_bytes() == before
    missing = tmp_path / "absent.db"
    result = runner.invoke(app, ["status", str(missing)])
    assert result.exit_code == 2
    assert not missing.exists()
    assert result.stderr.strip().splitlines() == [
        f"Error: {missing}: no such database file; databases in {tmp_path}: hist.db "
        f"(e.g. `pipeloom status {tmp_path / 'hist.db'}`)"
    ]
    elsewhere = runner.invoke(app, ["status", str(tmp_path / "sub" / "none.db")])
    assert elsewhere.exit_code == 2
    assert "pass the file a pipeline wrote, e.g. `pipeloom status ./wal_demo.db`" in (
        elsewhere.stderr
    )


def test_a_file_without_runs_says_so(tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    make_run(db, 0)
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM pipeline_runs")
    conn.commit()
    conn.close()
    result = runner.invoke(app, ["status", str(db)])
    assert result.exit_code == 0
    assert "No runs recorded" in result.output
    assert as_json([str(db)])["run"] is None


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--run", "9"], "--run 9: no such run in"),
        (["--db", "other.db"], "two databases given"),
        (["--format", "xml"], None),
        (["--limit", "0"], None),
    ],
)
def test_bad_options_exit_2(history: Path, args: list[str], expected: str | None) -> None:
    result = runner.invoke(app, ["status", str(history), *args])
    assert result.exit_code == 2
    if expected is not None:
        assert result.stderr.startswith(f"Error: {expected}")
        assert len(result.stderr.strip().splitlines()) == 1


def test_unusable_files_are_one_line_errors(tmp_path: Path) -> None:
    text = tmp_path / "notes.db"
    text.write_text("hello, not sqlite " * 100)
    plain = tmp_path / "plain.db"
    sqlite3.connect(plain).execute("CREATE TABLE t (x)").connection.close()
    seed = tmp_path / "seed.db"
    make_seed_layout(seed)
    cases = {
        tmp_path: "is a directory",
        text: "not a SQLite database",
        plain: "holds no pipeloom runs",
        seed: f"older pipeloom schema (version 0, current {SCHEMA_VERSION}); run `pipeloom db "
        f"upgrade {seed}` first",
    }
    for path, expected in cases.items():
        result = runner.invoke(app, ["status", str(path)])
        assert result.exit_code == 2, (path, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert expected in lines[0]


def test_watch_on_a_finished_run_prints_once_and_exits_with_its_outcome(history: Path) -> None:
    result = runner.invoke(app, ["status", str(history), "--watch", "--format", "json"])
    assert result.exit_code == 1, result.output  # the run failed: 1, as `pipeloom run` exited
    snapshot, end = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert snapshot["type"] == "snapshot" and len(snapshot["tasks"]) == 5
    assert end == {"type": "end", "run": snapshot["run"]}
    assert end["run"]["status"] == "error"


def test_watch_follows_a_live_run_until_it_ends(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    release = threading.Event()

    def worker(task: TaskDef, q: TaskQueue) -> None:
        q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
        release.wait(30)

    tasks = [TaskDef(i, f"w-{i}") for i in range(1, 4)]
    thread = threading.Thread(
        target=run_pipeline,
        args=(tasks, db),
        kwargs={"worker_fn": worker, "workers": 3, "progress": False, "handle_signals": False},
    )
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            # The file exists a moment before its tables do: poll until a task shows.
            polled = runner.invoke(app, ["status", str(db), "--format", "json"])
            if polled.exit_code == 0 and json.loads(polled.stdout)["tasks"]:
                break
            time.sleep(0.05)
        # The run goes on until the watcher has printed its first, running snapshot.
        watcher = subprocess.Popen(
            [sys.executable, "-m", "pipeloom_cli", "status", str(db), "--watch",
             "--interval", "0.05", "--format", "json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert watcher.stdout is not None
        first = watcher.stdout.readline()
        release.set()
        rest, errors = watcher.communicate(timeout=60)
    finally:
        release.set()
        thread.join(30)
    assert watcher.returncode == 0, errors
    lines = [first, *rest.strip().splitlines()]
    snapshots = [json.loads(line) for line in lines]
    assert snapshots[0]["run"]["status"] == "running"
    assert snapshots[-1]["run"]["status"] == "done"
    assert snapshots[-1]["run"]["counts"] == {"done": 3}


def path_key_run(db: Path) -> None:
    """One run of a pipeline named at length whose task keys are long file paths."""
    pipe = Pipeline("nightly-customer-exports-into-the-warehouse", db=db, workers=2)

    @pipe.task
    def load_file(ctx: Context, path: str) -> int:
        if path.endswith("3.csv"):
            raise ValueError(f"bad row 200 in {path}: expected 12 columns, found 11")
        return 1

    paths = [
        f"/home/me/projects/data/2024/11/exports/customers/part-{i:04d}.csv" for i in (1, 2, 3)
    ]
    pipe.map(load_file, paths)
    pipe.run(progress=False)


def test_status_at_60_columns_keeps_rows_on_one_line_with_both_ends_of_each_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "paths.db"
    path_key_run(db)
    env = {**clean_env(), "COLUMNS": "60"}
    tasks = subprocess.run(
        [*pipeloom_command(), "status", str(db)],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    lines = tasks.splitlines()
    assert all(cell_len(line) <= 60 for line in lines), tasks
    rows = [line for line in lines if "load_file" in line]
    assert len(rows) == 3, tasks  # one line per task: nothing wraps
    for row, n in zip(rows, (3, 1, 2), strict=True):
        assert row.split()[1].startswith("load_file:"), row
        assert row.split()[1].endswith(f"-{n:04d}.csv"), row
        assert "…" in row.split()[1]
    assert rows[0].split()[2] == "error" and "ValueErr" in rows[0]
    monkeypatch.setattr(console, "_width", 60)  # the shared console, as COLUMNS=60 sets it
    runs = runner.invoke(app, ["status", str(db), "--runs"]).stdout
    assert all(cell_len(line) <= 60 for line in runs.splitlines()), runs
    (row,) = [line for line in runs.splitlines() if line.strip().startswith("1 ")]
    assert row.split()[1].startswith("nightl") and row.split()[1].endswith("house"), row
    assert row.split()[2] == "error"
    assert row.split()[-2:] == ["2/3", "1"]  # done/total, failed
