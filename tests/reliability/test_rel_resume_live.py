"""Resume against a run that is still live, in real processes: refused, or waited for.

The first run is a ``pipeloom run`` child whose later partitions block until the test
releases them, so it is live (its writer beats its lease) while a second ``pipeloom run
--resume`` starts against the same file. Loads are counted in a file both processes append
to: nothing may be loaded twice.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._harness import query
from tests.e2e._cli_e2e_support import clean_env, pipeloom_command
from tests.reliability._support import wait_for

CHILD = Path(__file__).with_name("resume_child.py")
TARGET = f"{CHILD}:pipe"


def start(folder: Path, name: str, *args: str, fail_tail: bool = False) -> subprocess.Popen[bytes]:
    """``pipeloom run resume_child.py:pipe --db DB ARGS`` in the background.

    Its output goes to NAME.out and NAME.err in ``folder`` (read with `output`).
    """
    env = clean_env(RESUME_DIR=str(folder), RESUME_FAIL_TAIL="1" if fail_tail else "0")
    with (folder / f"{name}.out").open("wb") as out, (folder / f"{name}.err").open("wb") as err:
        return subprocess.Popen(
            [*pipeloom_command(), "run", TARGET, "--db", str(folder / "runs.db"), *args],
            cwd=folder,
            env=env,
            stdout=out,
            stderr=err,
        )


def output(folder: Path, name: str) -> tuple[str, str]:
    """What a child started by `start` printed so far: (stdout, stderr)."""
    out, err = ((folder / f"{name}.{kind}").read_text(errors="replace") for kind in ("out", "err"))
    return out, err


def said(folder: Path, name: str) -> str:
    """Everything a child printed, its lines joined (the log wraps them to the console)."""
    return " ".join(" ".join(output(folder, name)).split())


def finish(proc: subprocess.Popen[bytes]) -> int:
    """Wait for a child (killed if it hangs) and return its exit code."""
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def loads(folder: Path) -> Counter[int]:
    path = folder / "loads"
    lines = path.read_text().splitlines() if path.exists() else []
    return Counter(int(line.split()[0]) for line in lines)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A first run, live: partitions 1..10 loaded, the other 20 blocked until released."""
    first = start(tmp_path, "first", fail_tail=True)
    try:
        wait_for(
            lambda: sum(loads(tmp_path).values()) == 10 or first.poll() is not None,
            "the first run to load its first 10 partitions",
        )
        assert first.poll() is None, output(tmp_path, "first")
        yield first
    finally:
        (tmp_path / "release").touch()
        if first.poll() is None:
            finish(first)


def test_resume_of_a_live_run_is_refused_in_one_line(
    tmp_path: Path, live: subprocess.Popen[bytes]
) -> None:
    db = tmp_path / "runs.db"
    second = start(tmp_path, "second", "--resume")
    code = finish(second)

    out, err = output(tmp_path, "second")
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    for part in (str(db), "run 1 ", f"pid {live.pid}", socket.gethostname(), "lease", "--wait"):
        assert part in line, (part, line)
    assert query(db, "SELECT count(*) FROM pipeline_runs") == [(1,)]  # no second run began

    (tmp_path / "release").touch()
    assert finish(live) == 1  # partitions 26..30 failed
    assert loads(tmp_path) == Counter(range(1, 26))  # each once, all by the first run


def test_resume_with_wait_waits_for_the_live_run_then_resumes_it(
    tmp_path: Path, live: subprocess.Popen[bytes]
) -> None:
    db = tmp_path / "runs.db"
    second = start(tmp_path, "second", "--resume", "--wait")
    try:
        # It says it is waiting, while the first run is still live and alone in the file.
        wait_for(
            lambda: (
                "waiting for it to end" in said(tmp_path, "second") or second.poll() is not None
            ),
            "the resume to say it is waiting",
        )
        assert second.poll() is None, output(tmp_path, "second")
        assert live.poll() is None
        assert query(db, "SELECT count(*) FROM pipeline_runs") == [(1,)]
        (tmp_path / "release").touch()
        assert finish(live) == 1  # partitions 26..30 failed in the first run
    finally:
        (tmp_path / "release").touch()  # never leave the resume blocked behind the first run
        code = finish(second)

    assert code == 0, output(tmp_path, "second")
    # The first run loaded 1..25; the resume only what the first run had not done.
    assert loads(tmp_path) == Counter(range(1, 31))
    ((status, params),) = query(db, "SELECT status, params FROM pipeline_runs WHERE id = 2")
    assert status == "done" and json.loads(params)["resumed_from"] == 1
    counts = query(db, "SELECT status, count(*) FROM task_runs WHERE run_id = 2 GROUP BY 1")
    assert dict(counts) == {"done": 5, "skipped": 25}
