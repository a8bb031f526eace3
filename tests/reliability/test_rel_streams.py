"""Every stream pipeloom writes to: a run's work and record never depend on them.

Real ``pipeloom`` processes: stdout a pipe whose reader exits early, a console that cannot
encode "✗" or Japanese file names, ``/dev/full`` as the log file or as stdout. The run must
end as it would have, recorded in full, with at most one line on stderr and no traceback.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests._harness import query
from tests.cli._cli_support import write
from tests.e2e._cli_e2e_support import clean_env, pipeloom_command

STOPPED = "pipeloom: stopped writing to"

JAPANESE = """
    from pipeloom import Pipeline

    pipe = Pipeline("jp", db="jp.db", workers=1)


    @pipe.task
    def load(ctx, path):
        if path.endswith("2.csv"):
            raise ValueError("壊れた " + path)
        ctx.log.warning("読み込み %s", path)
        return {"ok": path}


    pipe.map(load, ["日本語/ファイル.csv", "日本語/ファイル2.csv"])
"""


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*pipeloom_command(), *args],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        timeout=60,
        check=False,
    )


def _statuses(db: Path) -> dict[str, int]:
    return dict(query(db, "SELECT status, COUNT(*) FROM task_runs GROUP BY status"))


@pytest.mark.parametrize(
    ("extra", "code", "counts"),
    [
        ([], 0, {"done": 16}),
        (["--fail-rate", "0.25", "--seed", "3"], 1, {"done": 12, "error": 4}),
        (["-e", "async"], 0, {"done": 16}),
    ],
)
def test_a_reader_that_exits_early_stops_the_output_not_the_run(
    tmp_path: Path, extra: list[str], code: int, counts: dict[str, int]
) -> None:
    """`pipeloom demo -v | head -1`: every task still runs and is recorded, same exit code."""
    db = tmp_path / "piped.db"
    argv = ["demo", "-v", "-n", "16", "-w", "2", "--delay", "0.01", "--db", str(db), *extra]
    proc = subprocess.Popen(
        [*pipeloom_command(), *argv],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline()  # the first log line; then the reader goes away
    proc.stdout.close()
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == code, err
    assert _statuses(db) == counts
    assert "Traceback" not in err and "SystemExit" not in err
    # At the latest the summary, printed after the close, hits the closed pipe: one line.
    assert [line for line in err.splitlines() if STOPPED in line] == [
        f"{STOPPED} stdout (Broken pipe); the run goes on and is still recorded in its database"
    ]


@pytest.mark.parametrize(
    "env",
    [
        {"PYTHONIOENCODING": "latin-1"},
        {"PYTHONIOENCODING": "cp1252"},
        {"PYTHONIOENCODING": "ascii", "LC_ALL": "C"},
    ],
    ids=["latin-1", "cp1252", "ascii"],
)
def test_a_console_that_cannot_encode_gets_replaced_text(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """A failed run's "✗" and Japanese names print as "?" on a latin-1/cp1252 console."""
    encoding = env["PYTHONIOENCODING"]
    write(tmp_path / "jp.py", JAPANESE)
    ran = _run(["run", "jp.py:pipe", "-v"], tmp_path, **env)
    err = ran.stderr.decode(encoding)
    assert ran.returncode == 1, err  # one task failed: the exit code says so, nothing else
    assert "Traceback" not in err and "UnicodeEncodeError" not in err
    out = ran.stdout.decode(encoding)
    assert "? load:??????/????????2.csv (task 2): ValueError: ???" in out
    assert _statuses(tmp_path / "jp.db") == {"done": 1, "error": 1}
    # The record keeps the text as written; only the console shows it replaced.
    assert query(tmp_path / "jp.db", "SELECT task_key FROM task_runs ORDER BY task_id")[0] == (
        "load:日本語/ファイル.csv",
    )
    table = ""
    for args in (["status", "jp.db"], ["status", "jp.db", "--task", "2"]):
        shown = _run(args, tmp_path, **env)
        assert shown.returncode == 0, shown.stderr.decode(encoding)
        assert shown.stderr == b""
        text = shown.stdout.decode(encoding)
        assert "load:??????/????????2.csv" in text
        table = table or text
    # One "?" per terminal cell: in the table, the column after the names still lines up.
    rows = [line for line in table.splitlines() if "load:" in line]
    assert len(rows) == 2
    assert len({line.index("|", line.index("load:")) for line in rows}) == 1


needs_dev_full = pytest.mark.skipif(
    not Path("/dev/full").exists(), reason="needs /dev/full (a device that is always full)"
)


@needs_dev_full
def test_a_full_log_file_stops_logging_with_one_line(tmp_path: Path) -> None:
    """``--log-file /dev/full``: the run completes and is recorded; one warning, no traceback."""
    db = tmp_path / "logged.db"
    ran = _run(
        ["demo", "-v", "-n", "20", "--delay", "0", "--log-file", "/dev/full", "--db", str(db)],
        tmp_path,
    )
    err = ran.stderr.decode()
    assert ran.returncode == 0, err
    assert _statuses(db) == {"done": 20}
    assert err.splitlines() == [
        f"{STOPPED} log file /dev/full (No space left on device); the run goes on and is "
        "still recorded in its database"
    ]
    assert "pipeloom run 1" in ran.stdout.decode()  # the console still shows the summary


@needs_dev_full
def test_a_full_stdout_stops_the_output_not_the_run(tmp_path: Path) -> None:
    """``pipeloom demo > /dev/full``: exit 0, every task recorded, one line on stderr."""
    db = tmp_path / "full.db"
    with Path("/dev/full").open("wb") as full:
        ran = subprocess.run(
            [*pipeloom_command(), "demo", "-v", "-n", "10", "--delay", "0", "--db", str(db)],
            cwd=tmp_path,
            env=clean_env(),
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    err = ran.stderr.decode()
    assert ran.returncode == 0, err
    assert _statuses(db) == {"done": 10}
    assert err.splitlines() == [
        f"{STOPPED} stdout (No space left on device); the run goes on and is still "
        "recorded in its database"
    ]
