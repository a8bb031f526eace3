# ruff: noqa: E501  (the scripts below are copied verbatim from the 0.0.7 docs)
"""pipeloom 0.0.7's documented calls (README, getting-started, how-to-extend, API pages).

Each script below is copied from the original's docs as a user would paste it, and run in a
fresh interpreter with warnings as errors. Where a snippet was a fragment (a line to add to
the writer's if-chain), the test runs the documented replacement and docs/migrating.md says
why.
"""

from __future__ import annotations

from pathlib import Path

from pipeloom.demo import DemoTask, demo_worker
from pipeloom.engine import run_pipeline
from tests._harness import query
from tests.compat._compat_support import run_script


def test_how_to_extend_custom_worker_runs_unchanged(tmp_path: Path) -> None:
    # docs/how-to-extend.md, "Custom worker" then "Run with your worker", as one file.
    proc = run_script(
        """
        from pipeloom.messages import TaskDef, MsgTaskStarted, MsgTaskProgress, MsgTaskFinished
        from datetime import UTC, datetime
        import time

        def my_worker(task: TaskDef, q) -> None:
            q.put(MsgTaskStarted(task.task_id, task.name, datetime.now(UTC).isoformat()))
            try:
                total = 3
                # Extract
                time.sleep(0.1)
                q.put(MsgTaskProgress(task.task_id, 1, total, "extracted"))
                # Transform
                time.sleep(0.1)
                q.put(MsgTaskProgress(task.task_id, 2, total, "transformed"))
                # Load (emit a domain message for writer to persist)
                time.sleep(0.1)
                q.put(MsgTaskProgress(task.task_id, 3, total, "loaded"))

                q.put(MsgTaskFinished(task.task_id, "done", datetime.now(UTC).isoformat()))
            except Exception as e:
                q.put(MsgTaskFinished(task.task_id, "error", datetime.now(UTC).isoformat(), message=str(e)))

        from pathlib import Path
        from pipeloom import run_pipeline, TaskDef, setup_logging

        setup_logging(2, None)
        tasks = [TaskDef(i, f"etl-{i}", steps=3) for i in range(1, 6)]
        run_pipeline(Path("etl.db"), tasks, workers=4, wal=True, store_task_status=True, worker_fn=my_worker)
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert query(
        tmp_path / "etl.db", "SELECT task_id, name, status, progress FROM task_runs ORDER BY 1"
    ) == [(i, f"etl-{i}", "done", 1.0) for i in range(1, 6)]
    # The README's observability queries work on the same file.
    assert query(
        tmp_path / "etl.db", "SELECT status, COUNT(*) FROM task_runs GROUP BY status;"
    ) == [("done", 5)]
    assert query(tmp_path / "etl.db", "SELECT * FROM task_runs WHERE status <> 'done';") == []


def test_getting_started_hello_runs_unchanged(tmp_path: Path) -> None:
    # docs/getting-started.md, "Hello, Pipeloom".
    proc = run_script(
        """
        from pathlib import Path
        from pipeloom import TaskDef, run_pipeline, setup_logging

        setup_logging(verbose=1)

        tasks = [TaskDef(task_id=i, name=f"task-{i}", steps=10) for i in range(1, 6)]
        run_pipeline(
          db_path=Path("loom.db"),
          tasks=tasks,
          workers=4,
          wal=True,
          store_task_status=True,
        )
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert query(tmp_path / "loom.db", "SELECT status, COUNT(*) FROM task_runs GROUP BY 1") == [
        ("done", 5)
    ]


def test_readme_call_without_a_worker_runs_unchanged(tmp_path: Path) -> None:
    # README.md, "Using pipeloom in Your ETL", step 3 (with the names it leaves to the user).
    proc = run_script(
        """
        from pathlib import Path
        from pipeloom import TaskDef, run_pipeline

        db_path = Path("readme.db")
        tasks = [TaskDef(i, f"task-{i}", steps=2) for i in range(1, 3)]
        run_pipeline(db_path, tasks, workers=2, wal=True, store_task_status=True)
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr


def test_store_task_status_false_leaves_the_file_to_the_user(tmp_path: Path) -> None:
    # README.md: "Pass store_task_status=False if you don't want the task_runs table."
    db_path = tmp_path / "mine.db"
    tasks = [DemoTask(task_id=i, name=f"task-{i}", delay=0) for i in range(1, 4)]
    # 0.0.7's argument order runs unchanged; the typed signature is (tasks, db_path).
    run_pipeline(
        db_path,  # type: ignore[arg-type]
        tasks,  # type: ignore[arg-type]
        workers=2,
        wal=True,
        store_task_status=False,
        worker_fn=demo_worker,
    )
    assert query(db_path, "SELECT name FROM sqlite_master") == []


def test_domain_messages_from_the_docs_with_a_registered_handler(tmp_path: Path) -> None:
    # README.md "Extending" and how-to-extend.md "Persist your domain data": the message
    # classes and their SQL as documented. The `elif isinstance(item, ...)` lines that 0.0.7
    # asked users to add to the writer become handlers (docs/migrating.md, "Custom messages").
    proc = run_script(
        """
        from dataclasses import dataclass
        from pathlib import Path

        from pipeloom import MsgTaskFinished, MsgTaskStarted, TaskDef, run_pipeline
        from pipeloom.messages import utc_now

        @dataclass(frozen=True)
        class MsgUpsertRecord:
            table: str
            key: str
            payload: dict

        @dataclass(frozen=True)
        class MsgUpsertUsersBatch:
            rows: list[tuple[str, str, int]]  # (key, name, active)

        def schema(conn):
            conn.execute("CREATE TABLE IF NOT EXISTS users (key TEXT PRIMARY KEY, name TEXT, active INTEGER)")

        def on_upsert(conn, msgs):
            for m in msgs:
                conn.execute(
                    "INSERT INTO users(key, name, active) VALUES (?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET name=excluded.name, active=excluded.active",
                    (m.key, m.payload["name"], m.payload["active"]),
                )

        def on_batch(conn, msgs):
            for item in msgs:
                conn.executemany(
                    "INSERT INTO users(key, name, active) VALUES (?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET name=excluded.name, active=excluded.active",
                    item.rows,
                )

        def worker(task, q):
            q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
            if task.task_id == 1:
                q.put(MsgUpsertRecord(table="users", key="abc123", payload={"name": "Caleb", "active": 1}))
            else:
                rows = [("k2", "Ada", 1), ("k3", "Grace", 0)]
                q.put(MsgUpsertUsersBatch(rows))
            q.put(MsgTaskFinished(task.task_id, "done", utc_now()))

        result = run_pipeline(
            Path("users.db"),
            [TaskDef(1, "one"), TaskDef(2, "batch")],
            workers=2,
            worker_fn=worker,
            schema=schema,
            handlers={MsgUpsertRecord: on_upsert, MsgUpsertUsersBatch: on_batch},
        )
        result.raise_for_status()
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert query(tmp_path / "users.db", "SELECT key, name, active FROM users ORDER BY key") == [
        ("abc123", "Caleb", 1),
        ("k2", "Ada", 1),
        ("k3", "Grace", 0),
    ]


def test_demo_task_and_worker_as_0_0_7_named_them(tmp_path: Path) -> None:
    # pipeloom/cli.py of 0.0.7: DemoTask(task_id=i, name=..., steps=20) with demo_worker.
    assert DemoTask(task_id=1, name="task-1").steps == 20
    tasks = [DemoTask(task_id=i, name=f"task-{i}", steps=20, delay=0) for i in range(1, 4)]
    run_pipeline(
        db_path=tmp_path / "wal_demo.db",
        tasks=tasks,
        workers=2,
        wal=True,
        store_task_status=True,
        worker_fn=demo_worker,
    )
    assert query(
        tmp_path / "wal_demo.db", "SELECT task_id, status, step, total, result FROM task_runs"
    ) == [(i, "done", 20, 20, f"ok:task-{i}") for i in range(1, 4)]


def test_a_script_whose_tasks_failed_can_fail_with_one_line(tmp_path: Path) -> None:
    proc = run_script(
        """
        from pathlib import Path
        from pipeloom import TaskDef, run_pipeline

        def worker(task, q):
            raise ValueError(f"{task.name}: source missing")

        run_pipeline(Path("f.db"), [TaskDef(1, "t1")], worker_fn=worker).raise_for_status()
        """,
        tmp_path,
    )
    assert proc.returncode == 1
    assert "RunFailedError: f.db: run 1 ended error (error 1); failed task ids: 1" in proc.stderr
