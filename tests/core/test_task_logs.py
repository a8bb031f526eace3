"""Task logs: what is stored, what is not, and an application's own logging left as it was."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from pipeloom import TaskDef, run_pipeline
from tests._harness import query

log = logging.getLogger("user.loader")


def _logs(task: TaskDef, q: Any) -> None:
    log.warning("loading %s", task.name)
    logging.getLogger("pipeloom.engine").warning("pipeloom's own lines are not a task's")


def test_a_plain_worker_functions_logging_is_stored_under_its_task(tmp_path: Path) -> None:
    db = tmp_path / "plain.db"
    log.warning("outside any task: not stored")
    result = run_pipeline(
        tasks=[TaskDef(1, "a"), TaskDef(2, "b")], db_path=db, worker_fn=_logs, progress=False
    )
    assert result.ok
    assert query(
        db, "SELECT task_id, attempt, level, logger, message FROM task_logs ORDER BY task_id"
    ) == [
        (1, 1, "WARNING", "user.loader", "loading a"),
        (2, 1, "WARNING", "user.loader", "loading b"),
    ]


def test_task_log_limit_zero_stores_nothing_but_counts_it(tmp_path: Path) -> None:
    db = tmp_path / "none.db"
    result = run_pipeline(
        tasks=[TaskDef(1, "a")], db_path=db, worker_fn=_logs, progress=False, task_log_limit=0
    )
    assert result.ok
    assert query(db, "SELECT dropped FROM task_logs") == [(1,)]


def test_an_application_without_logging_config_still_sees_its_warnings(tmp_path: Path) -> None:
    """Python prints WARNING records to stderr when nothing is configured; that stays so."""
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import logging
            from pipeloom import TaskDef, run_pipeline

            def work(task, q):
                logging.getLogger("app").warning("disk almost full on %s", task.name)

            if __name__ == "__main__":
                run_pipeline(tasks=[TaskDef(1, "sda")], db_path={str(tmp_path / "app.db")!r},
                             worker_fn=work, progress=False)
                logging.getLogger("app").warning("after the run")
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("disk almost full on sda") == 1
    assert proc.stderr.count("after the run") == 1
    assert query(tmp_path / "app.db", "SELECT message FROM task_logs") == [
        ("disk almost full on sda",)
    ]
