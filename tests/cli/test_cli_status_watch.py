"""``status --watch --format json`` on a live run: a snapshot, then only what changed."""

import json
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from pipeloom import TaskDef, TaskQueue, run_pipeline
from pipeloom_cli.app import app
from tests._harness import query
from tests.e2e._cli_e2e_support import clean_env, pipeloom_command

runner = CliRunner()

TASKS = 2_000
HELD = 1_900
"""Tasks after this one wait for the test, so the snapshot sees the run mid-way."""


def replay(lines: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """Apply the change lines to the snapshot, as a consumer of the stream would."""
    snapshot, *changes, end = lines
    run = dict(snapshot["run"])
    tasks = {t["task_id"]: t for t in snapshot["tasks"]}
    for line in changes:
        run.update(line["run"])
        tasks.update({t["task_id"]: t for t in line["tasks"]})
    run.update(end["run"])
    return run, tasks


def test_watch_json_prints_a_snapshot_then_only_the_tasks_that_changed(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    release = threading.Event()

    def worker(task: TaskDef, q: TaskQueue) -> None:
        if task.task_id > HELD:
            release.wait(60)

    tasks = [TaskDef(i, f"part-{i:05d}") for i in range(1, TASKS + 1)]
    thread = threading.Thread(
        target=run_pipeline,
        args=(tasks, db),
        kwargs={"worker_fn": worker, "workers": 4, "progress": False, "handle_signals": False},
    )
    thread.start()
    watcher: subprocess.Popen[str] | None = None
    try:
        deadline = time.monotonic() + 60
        done = 0
        while done < HELD and time.monotonic() < deadline:
            if db.exists():  # never create it: the pipeline does
                try:
                    done = query(db, "SELECT count(*) FROM task_runs WHERE status = 'done'")[0][0]
                except sqlite3.OperationalError:  # its tables are not there yet
                    done = 0
            time.sleep(0.02)
        assert done == HELD
        watcher = subprocess.Popen(
            [*pipeloom_command(), "status", str(db), "--watch", "--interval", "0.05",
             "--format", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
        )  # fmt: skip
        assert watcher.stdout is not None
        first = watcher.stdout.readline()  # printed before the held tasks are let go
        release.set()
        rest, err = watcher.communicate(timeout=60)
    finally:
        release.set()
        thread.join(60)
        if watcher is not None and watcher.poll() is None:
            watcher.kill()
    assert watcher.returncode == 0, err
    lines = [json.loads(first), *(json.loads(line) for line in rest.splitlines())]

    snapshot, *changes, end = lines
    assert snapshot["type"] == "snapshot" and snapshot["run"]["status"] == "running"
    assert [line["type"] for line in changes] == ["changes"] * len(changes)
    assert end["type"] == "end" and end["run"]["status"] == "done"
    assert changes, "the held tasks finished after the snapshot: some line must say so"
    finished_before = {t["task_id"] for t in snapshot["tasks"] if t["status"] == "done"}
    assert len(finished_before) == HELD
    for line in changes:
        # Only rows that changed: never a task that was already done at the snapshot.
        ids = [t["task_id"] for t in line["tasks"]]
        assert not finished_before.intersection(ids), line
        assert len(ids) == len(set(ids))
        assert set(line["run"]) >= {"status", "counts", "finished", "tasks_total"}
        assert len(json.dumps(line)) < len(json.dumps(snapshot)) / 5
    assert {t["task_id"] for line in changes for t in line["tasks"]} >= set(
        range(HELD + 1, TASKS + 1)
    )

    # Replaying the stream gives what `status --format json` prints once the run is over.
    run, tasks_now = replay(lines)
    final = json.loads(runner.invoke(app, ["status", str(db), "--format", "json"]).stdout)
    assert run == final["run"]
    assert tasks_now == {t["task_id"]: t for t in final["tasks"]}
    assert len(tasks_now) == TASKS
