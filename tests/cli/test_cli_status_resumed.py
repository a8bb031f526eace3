"""``pipeloom status`` on a resumed run, ``--task KEY``, and the task log's attempt column.

Run 1 loads 20 partitions and 17..19 fail. Run 2 resumes it: 17 partitions are skipped,
p17 is done, p18 is done on its second attempt (it logs on both), p19 fails again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeloom import Context, Pipeline
from pipeloom.options import RunOptions
from tests.e2e._cli_e2e_support import pipeloom

PARTS = [f"data/p{i:02d}.csv" for i in range(1, 21)]
SKIPPED = [p for p in PARTS if p not in ("data/p17.csv", "data/p18.csv", "data/p19.csv")]


def record(db: Path) -> None:
    pipe = Pipeline("parts", db=db, workers=2, options=RunOptions(task_log_limit=10))
    run = {"n": 1}
    tries: dict[tuple[int, str], int] = {}

    @pipe.task(retries=1, backoff=0.01)
    def load(ctx: Context, part: str) -> str:
        attempt = tries[run["n"], part] = tries.get((run["n"], part), 0) + 1
        ctx.log.info("loading %s", part)
        if run["n"] == 1 and part in ("data/p17.csv", "data/p18.csv", "data/p19.csv"):
            raise ValueError(f"{part} is not there yet")
        if run["n"] == 2 and (part == "data/p19.csv" or (part == "data/p18.csv" and attempt == 1)):
            raise ValueError(f"{part} is broken")
        return part

    pipe.map(load, PARTS)
    pipe.run(progress=False)
    run["n"] = 2
    pipe.run(resume=True, progress=False)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("resumed") / "parts.db"
    record(path)
    return path


def status(db: Path, *args: str) -> tuple[int, str, str]:
    result = pipeloom("status", str(db), *args, cwd=db.parent)
    return result.returncode, result.stdout, result.stderr


def test_a_resumed_run_lists_the_tasks_that_ran_first_and_counts_the_skipped(db: Path) -> None:
    code, out, err = status(db)
    assert code == 0, err
    rows = [line.split() for line in out.splitlines() if "load:data/" in line]
    # Failed, then done; the 17 skipped tasks are one line under the table, not 17 rows.
    assert [(r[1], r[2]) for r in rows] == [
        ("load:data/p19.csv", "error"),
        ("load:data/p17.csv", "done"),
        ("load:data/p18.csv", "done"),
    ]
    assert "17 skipped (done by an earlier run" in out


def test_a_resumed_runs_json_keeps_every_task_skipped_last(db: Path) -> None:
    code, out, err = status(db, "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["run"]["counts"] == {"done": 2, "error": 1, "skipped": 17}
    assert [(t["key"], t["status"]) for t in doc["tasks"]] == [
        ("load:data/p19.csv", "error"),
        ("load:data/p17.csv", "done"),
        ("load:data/p18.csv", "done"),
    ] + [(f"load:{p}", "skipped") for p in SKIPPED]
    assert doc["tasks_not_shown"] == 0


def test_task_by_key_in_each_run(db: Path) -> None:
    for run, status_, attempt in (("1", "error", 2), ("2", "done", 2)):
        code, out, err = status(db, "--run", run, "--task", "load:data/p18.csv", "-f", "json")
        assert code == 0, err
        task = json.loads(out)["task"]
        assert (task["key"], task["status"], task["attempt"]) == (
            "load:data/p18.csv",
            status_,
            attempt,
        )


def test_a_task_key_that_is_not_there_is_one_line_with_close_matches(db: Path) -> None:
    code, out, err = status(db, "--task", "load:data/p18.cvs")
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("Error: --task load:data/p18.cvs: no such task in run 2 (parts)")
    assert "close matches: load:data/p18.csv" in line
    assert f"pipeloom status {db} --run 2" in line


def test_the_task_log_table_shows_each_records_attempt(db: Path) -> None:
    code, out, err = status(db, "--task", "load:data/p18.csv")
    assert code == 0, err
    logs = out[out.index("Logs (") :]
    assert "attempt" in logs.splitlines()[1]
    rows = [line.split() for line in logs.splitlines() if "loading data/p18.csv" in line]
    # time, attempt, level: the same line from two attempts no longer reads as a duplicate.
    assert [(r[1], r[2]) for r in rows] == [("1", "INFO"), ("2", "INFO")]
