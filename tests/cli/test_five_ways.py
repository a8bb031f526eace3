"""One mixed run read five ways gives the same counts (issue #12: one status vocabulary).

The run: 2 tasks done, 1 error, 1 timeout, 1 retried then done, 1 retried then error and
1 cancelled. Read through the `RunResult`, the live bar's final line, ``pipeloom status``,
``pipeloom status --format json`` and the ``runs`` view, every reader says 7 tasks, all 7
finished, 3 done, 3 failed (error + timeout) and 1 cancelled.
"""

import io
import json
import re
import sqlite3
from pathlib import Path

from rich.console import Console
from rich.text import Text
from typer.testing import CliRunner

from pipeloom import (
    MsgTaskFinished,
    MsgTaskStarted,
    TaskDef,
    TaskQueue,
    run_pipeline,
    utc_now,
)
from pipeloom.messages import MsgTaskAttempt
from pipeloom.schema import RUNS_SELECT
from pipeloom.status import count_failed
from pipeloom_cli.app import app

runner = CliRunner()

EXPECTED = {"total": 7, "finished": 7, "done": 3, "failed": 3, "cancelled": 1}


def worker(task: TaskDef, q: TaskQueue) -> None:
    kind = task.payload
    if kind in ("retried-done", "retried-error"):
        started = utc_now()
        q.put(MsgTaskStarted(task.task_id, task.name, started))
        q.put(MsgTaskAttempt(task.task_id, 1, "error", "ValueError: flaky", started_at=started))
        q.put(MsgTaskStarted(task.task_id, task.name, utc_now(), attempt=2))
        if kind == "retried-error":
            raise ValueError("failed again on attempt 2")
        q.put(MsgTaskFinished(task.task_id, "done", utc_now(), attempt=2))
    elif kind == "error":
        raise ValueError("bad row 200")
    elif kind == "timeout":
        q.put(MsgTaskFinished(task.task_id, "timeout", utc_now(), message="no answer in 5 s"))
    elif kind == "cancelled":
        q.put(MsgTaskFinished(task.task_id, "cancelled", utc_now(), message="not needed"))


def runs_view(db: Path, run_id: int) -> tuple[int, int, int, float, int]:
    conn = sqlite3.connect(db)
    try:
        has_view = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'view' AND name = 'runs'"
        ).fetchone() == (1,)
        assert has_view
        row = conn.execute(
            "SELECT tasks_total, tasks_done, tasks_failed, progress FROM runs WHERE id = ?",
            (run_id,),
        ).fetchone()
        # The same SELECT works where the view could not be created.
        assert (
            conn.execute(
                f"SELECT tasks_total, tasks_done, tasks_failed, progress FROM ({RUNS_SELECT}) "
                "WHERE id = ?",
                (run_id,),
            ).fetchone()
            == row
        )
        cancelled = conn.execute(
            "SELECT tasks_cancelled FROM pipeline_runs WHERE id = ?", (run_id,)
        ).fetchone()[0]
    finally:
        conn.close()
    total, done, failed, progress = row
    return total, done, failed, progress, cancelled


def test_one_mixed_run_read_five_ways_gives_the_same_counts(tmp_path: Path) -> None:
    db = tmp_path / "five.db"
    kinds = ["done", "done", "error", "timeout", "retried-done", "retried-error", "cancelled"]
    tasks = [TaskDef(i, f"{kind}-{i}", payload=kind) for i, kind in enumerate(kinds, start=1)]
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system=None)
    result = run_pipeline(
        tasks, db, worker_fn=worker, workers=2, progress=True, console=console, run_name="five"
    )

    # 1. RunResult
    assert result.status == "error"
    assert result.counts == {"done": 3, "error": 2, "timeout": 1, "cancelled": 1}
    seen = {
        "total": result.total,
        "finished": sum(result.counts.values()),
        "done": result.counts["done"],
        "failed": count_failed(result.counts),
        "cancelled": result.counts["cancelled"],
    }
    assert seen == EXPECTED, "RunResult"
    assert sorted(result.failed_task_ids) == [3, 4, 6]

    # 2. The live bar's final line (and the summary under it)
    screen = Text.from_ansi(out.getvalue()).plain
    last_bar = [line for line in screen.splitlines() if "five" in line and "failed" in line][-1]
    bar = re.search(r"(\d+)/(\d+) (\d+) failed", last_bar)
    assert bar is not None, last_bar
    assert "✗" in last_bar
    assert (int(bar[1]), int(bar[2]), int(bar[3])) == (
        EXPECTED["finished"],
        EXPECTED["total"],
        EXPECTED["failed"],
    ), "live bar"
    summary = {m[1]: int(m[2]) for m in re.finditer(r"│ (\w+)\s+│\s+(\d+) │", screen)}
    assert (summary["done"], summary["error"] + summary["timeout"], summary["cancelled"]) == (
        EXPECTED["done"],
        EXPECTED["failed"],
        EXPECTED["cancelled"],
    ), "summary"

    # 3. pipeloom status (table)
    table = runner.invoke(app, ["status", str(db)])
    assert table.exit_code == 0, table.output
    line = re.search(r"tasks\s+(\d+)/(\d+) finished: (.*)", table.output)
    assert line is not None, table.output
    counts = {k: int(v) for k, v in (part.split() for part in line[3].split(", "))}
    seen = {
        "total": int(line[2]),
        "finished": int(line[1]),
        "done": counts["done"],
        "failed": count_failed(counts),
        "cancelled": counts["cancelled"],
    }
    assert seen == EXPECTED, "status"
    runs = runner.invoke(app, ["status", str(db), "--runs"])
    (row,) = [r for r in runs.output.splitlines() if r.split()[:2] == ["1", "five"]]
    assert row.split()[-2:] == ["3/7", "3"], "status --runs"

    # 4. pipeloom status --format json
    data = json.loads(runner.invoke(app, ["status", str(db), "--format", "json"]).stdout)
    run = data["run"]
    seen = {
        "total": run["tasks_total"],
        "finished": run["finished"],
        "done": run["counts"]["done"],
        "failed": count_failed(run["counts"]),
        "cancelled": run["counts"]["cancelled"],
    }
    assert seen == EXPECTED, "status --format json"
    assert run["counts"] == result.counts

    # 5. The runs view
    total, done, failed, progress, cancelled = runs_view(db, result.run_id or 0)
    seen = {
        "total": total,
        "finished": round(progress * total),
        "done": done,
        "failed": failed,
        "cancelled": cancelled,
    }
    assert seen == EXPECTED, "runs view"
