from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import pipeloom_observe

TASKS = 240

WRITER_SCRIPT = textwrap.dedent(
    f"""
    import sys
    import time
    from pathlib import Path

    from pipeloom import MsgTaskFinished, MsgTaskStarted, TaskDef, run_pipeline, utc_now

    GATES = {{60: Path(sys.argv[1] + ".gate1"), 120: Path(sys.argv[1] + ".gate2")}}


    def work(task, q):
        # Tasks past 60 and past 120 wait for the test to have seen the count so far, so it
        # sees the count grow however slow this machine is.
        for first, gate in GATES.items():
            while task.task_id >= first and not gate.exists():
                time.sleep(0.005)
        q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
        time.sleep(0.002)
        q.put(MsgTaskFinished(task.task_id, "done", utc_now()))


    run_pipeline(
        [TaskDef(i, f"chunk-{{i}}") for i in range({TASKS})],
        sys.argv[1],
        worker_fn=work,
        workers=2,
        progress=False,
        run_name="live",
    )
    """
)

COUNT_SQL = "SELECT COUNT(*) AS n FROM task_runs WHERE finished_at IS NOT NULL"


def schema_ready(path: Path) -> bool:
    if not path.exists():
        return False
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        found = conn.execute(
            "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('pipeline_runs', 'task_runs')"
        ).fetchone()
        return bool(found[0] == 2)
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


async def test_rows_show_up_while_a_pipeline_is_still_writing(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SCRIPT)
    writer = subprocess.Popen(
        [sys.executable, str(script), str(db)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while not schema_ready(db):
            if writer.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the writer never created the schema: {writer.communicate()}")
            await asyncio.sleep(0.02)

        ds = pipeloom_observe.build_datasette(db)
        await ds.invoke_startup()
        seen_while_writing: list[int] = []
        live_runs: list[dict[str, Any]] = []
        failures: list[str] = []
        deadline = time.monotonic() + 60
        for i in range(2_000):
            running = writer.poll() is None
            response = await ds.client.get(
                "/live.json", params={"sql": COUNT_SQL, "_shape": "array"}
            )
            if response.status_code != 200:
                failures.append(f"{response.status_code}: {response.text[:200]}")
            elif running:
                n = response.json()[0]["n"]
                seen_while_writing.append(n)
                partial = sorted({m for m in seen_while_writing if 0 < m < TASKS})
                if partial and not live_runs:
                    # Tasks past 60 wait for gate 1: the run is still going, part done.
                    live_runs.extend(
                        (await ds.client.get("/live/run_list.json?_shape=array")).json()
                    )
                if partial:
                    Path(f"{db}.gate1").touch()
                if len(partial) >= 2:
                    Path(f"{db}.gate2").touch()
            if i % 10 == 0:
                for page in ("/live/task_runs", "/live/latest_run"):
                    page_response = await ds.client.get(page)
                    if page_response.status_code != 200:
                        failures.append(f"{page} {page_response.status_code}")
            if not running or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        assert writer.wait(timeout=60) == 0, writer.communicate()

        final = await ds.client.get("/live.json", params={"sql": COUNT_SQL, "_shape": "array"})
        ds.databases["live"].close()
    finally:
        if writer.poll() is None:
            writer.kill()
        writer.communicate()

    assert failures == []
    assert final.json()[0]["n"] == TASKS
    assert seen_while_writing == sorted(seen_while_writing), "the count went backwards"
    # The runs list showed the run live: running, its planned total, part of it done.
    [run] = live_runs
    assert (run["status"], run["total"], run["stale"]) == ("running", TASKS, 0)
    assert 0 < run["done"] < TASKS
    assert 0 < run["progress"] < 1
    grown = [n for n in set(seen_while_writing) if 0 < n < TASKS]
    assert len(grown) >= 2, f"no partial counts seen while writing: {seen_while_writing}"
