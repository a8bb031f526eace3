"""One behaviour, however a pipeline is started and wherever its tasks run.

Every cell of {``python file.py``, ``python -m pkg.mod``, ``pipeloom run file.py:pipe``, an
imported module, a notebook-style ``exec``} x {threads, processes, async, dask} runs the same
small pipeline (`_matrix_flow`) in a real subprocess: a run, then a resume with the broken
tasks fixed, in one process (two commands for ``pipeloom run``). Each must leave the same
record in its SQLite file: rows emitted through a handler, an atomic failure that applies
nothing, task logs under the right attempt (an abandoned attempt's late lines never stored),
progress, a timeout whose attempts say how many held messages they discarded, stages, resume.

Threads and processes run every way; async and Dask run a reduced set, to keep the module
near 15 s on 2 cores: the ways differ in how the code reaches the workers, which async
shares with threads, and Dask gets its code in two ways only, by value (a script's
``__main__``, or a notebook's, which travels the same way) and by file (``pipeloom run``).
The Dask cells connect to the executor tests' cluster by its address.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests._harness import query

FLOW = Path(__file__).with_name("_matrix_flow.py")

WAYS: dict[str, list[str]] = {
    "file": ["mx/flow.py"],
    "module": ["-m", "mx.flow"],
    "cli": ["-m", "pipeloom_cli", "run", "mx/flow.py:pipe"],
    "imported": ["-c", "import mx.flow as f; f.main()"],
    "notebook": ["-c", "exec(compile(open('mx/flow.py').read(), '<cell>', 'exec'))"],
}

CELLS = [
    *[("threads", way) for way in WAYS],
    *[("processes", way) for way in WAYS],
    ("async", "file"),
    ("async", "notebook"),
    *[pytest.param("dask", way, marks=pytest.mark.xdist_group("dask")) for way in ("file", "cli")],
]

DISCARDED = "(501 emitted messages of this attempt discarded)"

EXPECTED_TASKS = {
    # run 1: key -> (status, attempt, progress, result)
    (1, "load:1"): ("done", 1, 1.0, "1"),
    (1, "load:2"): ("done", 1, 1.0, "2"),
    (1, "load:3"): ("done", 1, 1.0, "3"),
    (1, "parse:1"): ("done", 1, 1.0, "10"),
    (1, "parse:2"): ("done", 1, 1.0, "20"),
    (1, "parse:3"): ("done", 1, 1.0, "30"),
    (1, "total:all parse"): ("done", 1, 1.0, "60"),
    (1, "broken:1"): ("error", 1, 0.0, None),
    (1, "slow:1"): ("timeout", 2, 0.0, None),
    # run 2, the resume: what was done is skipped, the fixed tasks run
    **{
        (2, key): ("skipped", 1, 1.0, None)
        for key in ["load:1", "load:2", "load:3", "parse:1", "parse:2", "parse:3"]
    },
    (2, "total:all parse"): ("skipped", 1, 1.0, None),
    (2, "broken:1"): ("done", 1, 1.0, "1"),
    (2, "slow:1"): ("done", 1, 1.0, "1"),
}

EXPECTED_LOGS = sorted(
    [(1, f"load:{n}", 1, f"loaded {n}") for n in (1, 2, 3)]
    + [(1, f"load:{n}", 1, f"user line {n}") for n in (1, 2, 3)]
    + [(1, "slow:1", 1, "slow attempt 1"), (1, "slow:1", 2, "slow attempt 2")]
    + [(2, "slow:1", 1, "slow attempt 1")]
)


def _run(tmp_path: Path, executor: str, way: str, address: str | None) -> None:
    """Run the cell's first run and its resume (the CLI: one command each)."""
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "MX_DB": str(tmp_path / "mx" / "matrix.db")}
    commands = [list(WAYS[way])]
    if way == "cli":
        first = commands[0] + ["--executor", executor]
        first += ["--dask-address", address] if address else []
        commands = [first, [*first, "--resume"]]
    else:
        env["MX_EXECUTOR"] = executor
        if address:
            env["MX_DASK"] = address
    for n, args in enumerate(commands):
        if n == 1:
            (tmp_path / "mx" / "fixed").touch()
        proc = subprocess.run(
            [sys.executable, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        expected = 0 if way != "cli" or n == 1 else 1
        assert proc.returncode == expected, proc.stdout[-2000:] + proc.stderr[-4000:]


def _record(db: Path) -> dict[str, Any]:
    tasks = {
        (run, key): (status, attempt, progress, result)
        for run, key, status, attempt, progress, result in query(
            db, "SELECT run_id, task_key, status, attempt, progress, result FROM task_runs"
        )
    }
    for key, value in list(tasks.items()):
        if value[0] == "skipped":
            tasks[key] = (*value[:3], None)  # {"done_in_run": 1}: checked below
    return {
        "runs": query(db, "SELECT id, status FROM pipeline_runs ORDER BY id"),
        "tasks": tasks,
        "messages": dict(
            query(
                db, "SELECT task_key, message FROM task_runs WHERE run_id = 1 AND status != 'done'"
            )
        ),
        "attempts": query(
            db,
            "SELECT r.task_key, a.attempt, a.status, a.discarded FROM task_attempts a "
            "JOIN task_runs r USING (run_id, task_id)",
        ),
        "logs": sorted(
            query(
                db,
                "SELECT l.run_id, r.task_key, l.attempt, l.message FROM task_logs l "
                "JOIN task_runs r USING (run_id, task_id)",
            )
        ),
        "rows": dict(query(db, "SELECT task, COUNT(*) FROM rows GROUP BY task")),
    }


@pytest.mark.parametrize(("executor", "way"), CELLS)
def test_one_behaviour_however_started_and_wherever_run(
    tmp_path: Path, executor: str, way: str, request: pytest.FixtureRequest
) -> None:
    (tmp_path / "mx").mkdir()
    (tmp_path / "mx" / "__init__.py").write_text("")
    shutil.copy(FLOW, tmp_path / "mx" / "flow.py")
    address = None
    if executor == "dask":
        address = request.getfixturevalue("dask_client").scheduler.address
    _run(tmp_path, executor, way, address)
    db = tmp_path / "mx" / "matrix.db"
    got = _record(db)

    assert got["runs"] == [(1, "error"), (2, "done")]
    assert got["tasks"] == EXPECTED_TASKS
    messages = got["messages"]
    assert messages["broken:1"].startswith("ValueError: row 1 is bad (1 emitted message of")
    assert messages["slow:1"].startswith("TaskTimeoutError: did not finish within 0.3 s")
    assert messages["slow:1"].endswith(DISCARDED)
    assert got["attempts"] == [("slow:1", 1, "timeout", 501)]
    assert got["logs"] == EXPECTED_LOGS  # no late line of an abandoned attempt
    # The broken and the timed-out task applied nothing until their successful resume.
    assert got["rows"] == {"load": 3, "broken": 1, "slow": 501}
