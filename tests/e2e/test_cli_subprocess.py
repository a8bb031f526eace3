import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeloom_cli.commands.demo import DemoPlan, DemoTasks
from tests.e2e._cli_e2e_support import clean_env, pipeloom, pipeloom_command

PIPELINE = """
    from pathlib import Path

    from pipeloom import MsgTaskProgress, TaskDef, TaskQueue, run_pipeline
    from pipeloom.engine import RunResult


    def work(task: TaskDef, q: TaskQueue) -> None:
        q.put(MsgTaskProgress(task.task_id, 1, 1, "loaded"))
        if task.name == "part-3" and task.payload:
            raise ValueError("part-3 is corrupt")


    def main(n: int, fail: bool = False, db: Path = Path("etl.db")) -> RunResult:
        tasks = [TaskDef(i, f"part-{i}", payload=fail) for i in range(1, n + 1)]
        return run_pipeline(tasks, db, worker_fn=work, run_name="etl")
"""


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_run_a_file_target_with_an_arg(tmp_path: Path) -> None:
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "etl.py").write_text(textwrap.dedent(PIPELINE))
    ok = pipeloom("run", "pipelines/etl.py:main", "--arg", "n=4", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    with sqlite3.connect(tmp_path / "etl.db") as conn:
        rows = conn.execute("SELECT name, status FROM task_runs ORDER BY task_id").fetchall()
    assert rows == [(f"part-{i}", "done") for i in range(1, 5)]
    assert "pipeloom run 1" in ok.stdout

    failed = pipeloom(
        "run", "pipelines/etl.py:main", "--arg", "n=4", "--arg", "fail=1", cwd=tmp_path
    )
    assert failed.returncode == 1, failed.stderr

    bad = pipeloom("run", "pipelines/etl.py:main", "--arg", "n=four", cwd=tmp_path)
    assert bad.returncode == 2
    assert "--arg n=four: 'four' is not a valid int" in one_error_line(bad)


USER_ERRORS: list[tuple[list[str], str]] = [
    (["run", "nowhere.py:main"], "nowhere.py does not exist"),
    (["run", "no_such_pkg_xyz.mod:main"], "no module named 'no_such_pkg_xyz'"),
    (["run", "json:no_such_function"], "json has no 'no_such_function'"),
    (["run", "json:dumps", "--arg", "oops"], "expected key=value"),
    (["status", "absent.db"], "absent.db: no such database file"),
    (["status", "text.db"], "not a SQLite database"),
    (["demo", "--db", "folder"], "folder: is a directory"),
    (["demo", "--db", "text.db"], "text.db: is not a SQLite database"),
]


def test_user_errors_are_one_line_on_stderr_with_exit_2(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "text.db").write_text("just some notes\n" * 10)
    # Started together: each one spends most of its time importing, not working.
    procs = [
        subprocess.Popen(
            [*pipeloom_command(), *args],
            cwd=tmp_path,
            env=clean_env(),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for args, _ in USER_ERRORS
    ]
    for proc, (args, expected) in zip(procs, USER_ERRORS, strict=True):
        out, err = proc.communicate(timeout=60)
        done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        assert done.returncode == 2, (args, out, err)
        assert expected in one_error_line(done), args
    assert not (tmp_path / "absent.db").exists()


def test_demo_then_status_json_lists_the_20_done_tasks(tmp_path: Path) -> None:
    demo = pipeloom("demo", "--db", "runs.db", "--seed", "3", "--delay", "0.01", cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    status = pipeloom("status", "runs.db", "--format", "json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["run"]["status"] == "done"
    assert data["run"]["counts"] == {"done": 20}
    assert [t["status"] for t in data["tasks"]] == ["done"] * 20
    assert sorted(t["task_id"] for t in data["tasks"]) == list(range(1, 21))


def slept_by_one_worker(n: int, delay: float, seed: int, fail_rate: float) -> float:
    """Seconds the demo's tasks sleep in all (a lower bound on a one-worker run's length)."""
    tasks = DemoTasks(n, steps=5, delay=delay, fail_rate=fail_rate, seed=seed)
    total = 0.0
    for task in tasks:
        plan: DemoPlan = task.payload
        total += sum(plan.delays[: plan.fail_at] if plan.fail_at else plan.delays)
    return total


def test_non_tty_output_has_no_escape_codes_progress_lines_and_ends_with_the_summary(
    tmp_path: Path,
) -> None:
    # A plain progress line every half second (PIPELOOM_PROGRESS_EVERY; 5 s by default):
    # make sure the run cannot be shorter than that.
    assert slept_by_one_worker(8, delay=0.1, seed=1, fail_rate=0.25) > 2.0
    proc = pipeloom(
        "demo", "--db", "ci.db", "-w", "1", "-n", "8", "--fail-rate", "0.25", "--seed", "1",
        "--delay", "0.1", "-v", cwd=tmp_path, env={"PIPELOOM_PROGRESS_EVERY": "0.5"},
    )  # fmt: skip
    assert proc.returncode == 1
    assert "\x1b" not in proc.stdout + proc.stderr
    lines = proc.stdout.rstrip().splitlines()
    assert any(
        re.fullmatch(r"demo: \d/8 finished, \d failed, \d+\.\ds elapsed", ln) for ln in lines
    )
    assert "failing on purpose" in proc.stdout
    title = max(i for i, line in enumerate(lines) if "pipeloom run 1" in line)
    end = max(i for i, line in enumerate(lines) if line.startswith("└"))
    summary = "\n".join(lines[title : end + 1])
    assert re.search(r"done\s+│\s+6", summary)
    assert re.search(r"error\s+│\s+2", summary)
    assert "pipeloom observe ci.db" in summary
    assert "task-" not in summary
    # Under the table: the failed tasks with their errors, and where to read more.
    failures = lines[end + 1 :]
    assert len([ln for ln in failures if ln.startswith("  ✗ task-")]) == 2
    assert all("DemoTaskError" in ln for ln in failures if ln.startswith("  ✗"))
    assert failures[-1] == "  details: pipeloom status ci.db --run 1"


def test_python_m_pipeloom_cli_and_completion(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pipeloom_cli", "--version"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0
    assert proc.stdout.startswith("pipeloom-cli ")
    completion = subprocess.run(
        pipeloom_command(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=clean_env(
            _PIPELOOM_COMPLETE="complete_bash", COMP_WORDS="pipeloom sta", COMP_CWORD="1"
        ),
    )
    assert completion.stdout.split() == ["status"]


@pytest.mark.skipif(os.name != "posix", reason="sends SIGINT")
def test_ctrl_c_stops_the_run_records_cancelled_and_exits_130(tmp_path: Path) -> None:
    db = tmp_path / "stop.db"
    proc = subprocess.Popen(
        [*pipeloom_command(), "demo", "--db", str(db), "-n", "40", "-w", "2", "--delay", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        deadline = time.monotonic() + 60
        started = False
        while time.monotonic() < deadline and not started:
            time.sleep(0.1)
            if db.exists():
                try:
                    with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True) as conn:
                        started = bool(conn.execute("SELECT count(*) FROM task_runs").fetchone()[0])
                except sqlite3.OperationalError:
                    continue
        assert started, "the demo never started a task"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (out, err)
    with sqlite3.connect(db) as conn:
        status, note = conn.execute("SELECT status, note FROM pipeline_runs").fetchone()
        rows = conn.execute("SELECT count(*) FROM task_runs").fetchone()[0]
    assert status == "cancelled"
    assert note == f"{40 - rows} task(s) not started: the run was stopped"
    assert "Traceback" not in err
