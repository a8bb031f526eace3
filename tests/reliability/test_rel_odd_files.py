"""Odd files get one clear line: read-only folders, damaged pages, FIFOs, odd names.

Each case is a real file: a folder made unwritable (``chattr +i`` when the tests run as root,
who ignores permission bits), a database with garbage over one page, a named pipe, and names
holding the characters a SQLite URI gives meaning to (``#``, ``?``, ``%``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import pipeloom_observe
from pipeloom.errors import DatabaseError
from pipeloom_cli.app import app
from tests import _harness as harness
from tests.e2e._cli_e2e_support import clean_env, pipeloom_command

runner = CliRunner()


def make_run(db: Path, n: int = 4) -> None:
    """One finished run of ``n`` tasks; the last one fails."""
    harness.make_run(db, n, failing=(n,), handle_signals=False)


def pipeloom_all(cwd: Path, *commands: list[str]) -> list[tuple[int, str, str]]:
    """Run each ``pipeloom ARGS`` in its own process, all at once (each takes ~1 s to start).

    The timeout only turns a hang (a FIFO read before the fix) into a failure.
    """
    procs = [
        subprocess.Popen(
            [*pipeloom_command(), *args],
            cwd=cwd,
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    results = []
    for args, proc in zip(commands, procs, strict=True):
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
                other.communicate()
            pytest.fail(f"`pipeloom {' '.join(args)}` hung")
        results.append((proc.returncode, out, err))
    return results


def one_error_line(stderr: str) -> str:
    """The whole of stderr, checked to be one ``Error:`` line and no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    return lines[0]


def _chattr(flag: str, path: Path) -> bool:
    """Set or clear the immutable flag (even root cannot create files in such a folder)."""
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


@contextlib.contextmanager
def made_read_only(folder: Path) -> Iterator[Path]:
    """Make ``folder`` one nobody, root included, can create files in, for the block."""
    folder.chmod(0o555)
    immutable = False
    try:
        if os.access(folder, os.W_OK):  # root: permission bits do not apply
            immutable = _chattr("+i", folder)
            if not immutable or os.access(folder, os.W_OK):
                pytest.skip("running as root, and `chattr +i` cannot make a folder read-only")
        yield folder
    finally:
        if immutable:
            assert _chattr("-i", folder), f"could not clear the immutable flag on {folder}"
        folder.chmod(0o755)


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder holding a finished run, made read-only."""
    folder = tmp_path / "archive"
    folder.mkdir()
    make_run(folder / "runs.db")
    with made_read_only(folder):
        yield folder


def test_a_database_in_a_read_only_folder_is_read_and_writing_names_the_folder(
    read_only_folder: Path,
) -> None:
    db = read_only_folder / "runs.db"
    before = sorted(os.listdir(read_only_folder))
    status, demo = pipeloom_all(
        read_only_folder, ["status", str(db)], ["demo", "--db", str(db), "-n", "2"]
    )
    assert status[0] == 0, status  # read: "not a SQLite database" before the fix
    assert "job-4" in status[1] and "error" in status[1]
    as_json = runner.invoke(app, ["status", str(db), "--format", "json"])
    assert as_json.exit_code == 0 and '"done": 3' in as_json.output, as_json.output
    info = runner.invoke(app, ["db", "info", str(db)])
    assert info.exit_code == 0 and "tasks:           4 (done 3, error 1)" in info.output
    line = one_error_line(demo[2])
    assert demo[0] == 2
    assert f"folder {read_only_folder} is not writable" in line
    assert "not a SQLite database" not in line and "move the file away" not in line

    with pytest.raises(DatabaseError, match=f"folder {read_only_folder} is not writable"):
        make_run(db)
    assert sorted(os.listdir(read_only_folder)) == before  # nothing created, nothing changed


async def test_observe_reads_a_database_in_a_read_only_folder(read_only_folder: Path) -> None:
    ds = pipeloom_observe.build_datasette(read_only_folder / "runs.db")
    await ds.invoke_startup()
    response = await ds.client.get(
        "/runs.json", params={"sql": "SELECT count(*) AS n FROM task_runs", "_shape": "array"}
    )
    assert response.status_code == 200, response.text
    assert response.json() == [{"n": 4}]
    ds.databases["runs"].close()


def test_a_read_only_file_is_read_and_writing_it_is_one_clear_line(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    make_run(db)
    db.chmod(0o444)
    immutable = False
    if os.access(db, os.W_OK):  # root: permission bits do not apply
        immutable = _chattr("+i", db)
        if not immutable:
            db.chmod(0o644)
            pytest.skip("running as root, and `chattr +i` cannot make a file read-only")
    try:
        with pytest.raises(DatabaseError, match="no permission to write the file"):
            make_run(db)
        result = runner.invoke(app, ["status", str(db)])
    finally:
        if immutable:
            assert _chattr("-i", db), f"could not clear the immutable flag on {db}"
        db.chmod(0o644)
    assert result.exit_code == 0 and "job-4" in result.output, result.output


def test_commits_still_in_a_wal_in_a_read_only_folder_are_one_clear_line(
    tmp_path: Path,
) -> None:
    """Reading them needs a -shm SQLite cannot create there; skipping them would lie."""
    source, folder = tmp_path / "live.db", tmp_path / "copied"
    make_run(source)
    folder.mkdir()
    writer = sqlite3.connect(source)
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute("UPDATE task_runs SET message = 'later'")
    writer.commit()
    for suffix in ("", "-wal"):  # a copy taken while a writer held it: no -shm
        shutil.copyfile(f"{source}{suffix}", folder / f"runs.db{suffix}")
    writer.close()
    with made_read_only(folder):
        result = runner.invoke(app, ["status", str(folder / "runs.db")])
    line = one_error_line(result.output)
    assert result.exit_code == 2
    assert f"folder {folder} is not writable" in line and "-wal" in line


def _damage_page_2(db: Path) -> None:
    conn = sqlite3.connect(db)
    (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.close()
    assert not db.with_name(db.name + "-wal").exists()  # everything is in the main file
    with db.open("r+b") as fh:
        fh.seek(page_size)  # page 2: the root of pipeline_runs
        fh.write(b"\xde\xad\xbe\xef" * (page_size // 4))


def test_a_damaged_database_is_one_line_naming_the_file(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    make_run(db)
    _damage_page_2(db)
    ((code, _, stderr),) = pipeloom_all(tmp_path, ["status", str(db)])
    lines = [(code, one_error_line(stderr))]
    for args in (["status", str(db), "--runs"], ["db", "info", str(db)]):
        result = runner.invoke(app, args)
        lines.append((result.exit_code, one_error_line(result.output)))
    for code, line in lines:
        assert code == 2
        assert str(db) in line and "damaged" in line and "integrity_check" in line


def test_a_fifo_is_refused_up_front_and_nothing_hangs(tmp_path: Path) -> None:
    fifo = tmp_path / "runs.db"
    os.mkfifo(fifo)
    # As processes first: before the fix both hung, which only a timeout can turn into a failure.
    results = pipeloom_all(tmp_path, ["status", str(fifo)], ["demo", "--db", str(fifo), "-n", "2"])
    lines = [(code, one_error_line(stderr)) for code, _, stderr in results]
    info = runner.invoke(app, ["db", "info", str(fifo)])
    lines.append((info.exit_code, one_error_line(info.output)))
    for code, line in lines:
        assert code == 2
        assert f"{fifo}: is a FIFO" in line
    with pytest.raises(DatabaseError, match="is a FIFO"):
        make_run(fifo)
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def _table_t(path: Path, marker: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (marker TEXT)")
    conn.executemany("INSERT INTO t VALUES (?)", [(marker,), (marker,)])
    conn.commit()
    conn.close()


def _markers(path: Path) -> list[str]:
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return [row[0] for row in conn.execute("SELECT marker FROM t")]
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("name", "sibling"),
    [("runs#2.db", "runs"), ("runs?v=2.db", "runs"), ("runs%41.db", "runsA.db")],
)
async def test_observe_serves_the_named_file_read_only(
    tmp_path: Path, name: str, sibling: str
) -> None:
    db = tmp_path / name
    make_run(db)
    _table_t(db, "mine")
    _table_t(tmp_path / sibling, "sibling")  # the file an unescaped URI opened instead
    before = sorted(os.listdir(tmp_path))
    ds = pipeloom_observe.build_datasette(db)
    await ds.invoke_startup()
    (db_name,) = (key for key in ds.databases if not key.startswith("_"))
    url = ds.urls.database(db_name, format="json")

    read = await ds.client.get(url, params={"sql": "SELECT marker FROM t", "_shape": "array"})
    assert read.status_code == 200, read.text
    assert read.json() == [{"marker": "mine"}, {"marker": "mine"}]
    write = await ds.client.get(url, params={"sql": "WITH x AS (SELECT 1) DELETE FROM t"})
    assert write.status_code == 400, write.text
    ds.databases[db_name].close()

    assert _markers(db) == ["mine", "mine"]
    assert _markers(tmp_path / sibling) == ["sibling", "sibling"]
    # Only the database's own -wal/-shm may appear (a WAL reader makes them); no new file.
    assert set(os.listdir(tmp_path)) - set(before) <= {f"{name}-wal", f"{name}-shm"}
