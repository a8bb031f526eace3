"""Helpers shared by the CLI tests: real run databases and target files in tmp_path."""

from __future__ import annotations

import sqlite3
import textwrap
from pathlib import Path

from tests._harness import make_run

__all__ = ["PIPELINE_FILE", "make_run", "make_seed_layout", "write"]


def write(path: Path, code: str) -> Path:
    """Write dedented ``code`` to ``path`` and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(code), encoding="utf-8")
    return path


def make_seed_layout(db: Path) -> None:
    """Create the original single-run ``task_runs`` table (schema before pipeline_runs)."""
    conn = sqlite3.connect(db)
    conn.execute(
        "CREATE TABLE task_runs (id INTEGER PRIMARY KEY, name TEXT, status TEXT, "
        "progress REAL, message TEXT, started_at TEXT, finished_at TEXT, result TEXT)"
    )
    conn.execute(
        "INSERT INTO task_runs VALUES (1, 'old', 'done', 1.0, '', "
        "'2024-01-01T00:00:00+00:00', '2024-01-01T00:00:01+00:00', 'ok')"
    )
    conn.commit()
    conn.close()


PIPELINE_FILE = """
    from pathlib import Path

    from pipeloom import TaskDef, TaskQueue, run_pipeline
    from pipeloom.engine import RunResult


    def work(task: TaskDef, q: TaskQueue) -> None:
        if task.payload == "fail":
            raise ValueError(f"{task.name} failed on purpose")


    def main(
        n: int,
        db: Path = Path("pipe.db"),
        fail: bool = False,
        ratio: float = 0.0,
        label: str = "x",
    ) -> RunResult:
        tasks = [
            TaskDef(i, f"part-{i}", payload="fail" if fail and i == 1 else None)
            for i in range(1, n + 1)
        ]
        params = {"n": n, "fail": fail, "ratio": ratio, "label": label, "db": type(db).__name__}
        return run_pipeline(tasks, db, worker_fn=work, run_name="from-file", params=params)
"""
"""A target file: ``main(n, db, fail, ratio, label)`` runs ``n`` tasks and returns the result."""
