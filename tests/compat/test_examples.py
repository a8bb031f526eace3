"""Every script in examples/ runs as ``pipeloom run examples/NAME.py:pipe`` and stores its rows."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from pipeloom_cli.app import app
from tests._harness import query
from tests.e2e._cli_e2e_support import pipeloom

runner = CliRunner()


@pytest.fixture(autouse=True)
def _forget_loaded_examples() -> Iterator[None]:
    """Drop the modules `pipeloom run FILE.py` registers, so later tests never import them.

    A process executor loads every file-loaded module into its children; an example left in
    ``sys.modules`` would be imported again by an unrelated test's workers.
    """
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("pipeloom_target_"):
            del sys.modules[name]


def run_here(*args: str) -> Result:
    """``pipeloom ARGS`` in this process (the multi-run tests; cwd set by the test)."""
    return runner.invoke(app, list(args))


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

CASES = {
    "csv_loader": (
        "csv_loader.db",
        "SELECT COUNT(*), COUNT(DISTINCT source), COUNT(DISTINCT country) FROM customers",
        [(1000, 5, 5)],
    ),
    "etl_http_json_sqlite": (
        "etl.db",
        "SELECT (SELECT COUNT(*) FROM posts), (SELECT COUNT(*) FROM todos), "
        "(SELECT SUM(completed) FROM todos)",
        [(100, 200, 66)],
    ),
    "file_writer": (
        "file_writer.db",
        "SELECT name, size FROM files ORDER BY name",
        [
            ("file-01-262144.bin", 262144),
            ("file-02-524288.bin", 524288),
            ("file-03-1048576.bin", 1048576),
        ],
    ),
    "http_downloader": (
        "downloads.db",
        "SELECT file, size FROM downloads ORDER BY file",
        [(f"sample-{i}.bin", (64 << 10) << (i - 1)) for i in range(1, 5)],
    ),
    "orders_etl": (
        "orders.db",
        "SELECT (SELECT COUNT(*) FROM orders), (SELECT COUNT(*) FROM rejects), "
        "(SELECT COUNT(DISTINCT country) FROM orders)",
        [(843, 54, 5)],
    ),
}


def test_every_example_file_has_a_case() -> None:
    assert sorted(p.stem for p in EXAMPLES.glob("*.py")) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_example_runs_with_pipeloom_run(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In this process (a subprocess per example would cost a second of start-up each);
    # test_an_example_runs_as_a_user_runs_it below runs one through the real script.
    monkeypatch.chdir(tmp_path)
    db, sql, expected = CASES[name]
    result = run_here("run", str(EXAMPLES / f"{name}.py:pipe"))
    assert result.exit_code == 0, result.output
    assert query(tmp_path / db, sql) == expected
    assert query(tmp_path / db, "SELECT COUNT(*) FROM task_runs WHERE status <> 'done'") == [(0,)]
    if name == "file_writer":
        for file, size, sha in query(tmp_path / db, "SELECT * FROM files"):
            data = (tmp_path / "file_writer_out" / file).read_bytes()
            assert (len(data), hashlib.sha256(data).hexdigest()) == (size, sha)
        assert not list((tmp_path / "file_writer_out").glob("*.part"))


def test_an_example_runs_as_a_user_runs_it(tmp_path: Path) -> None:
    proc = pipeloom("run", str(EXAMPLES / "orders_etl.py:main"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if " orders, " in line]
    assert len(lines) == 5  # the summary query: one line per country
    assert "54 rows rejected" in proc.stdout
    assert query(tmp_path / "orders.db", "SELECT COUNT(*) FROM orders") == [(843,)]


def test_orders_etl_resumes_after_a_broken_file_is_fixed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first = run_here("run", str(EXAMPLES / "orders_etl.py:pipe"))
    assert first.exit_code == 0, first.output
    before = query(tmp_path / "orders.db", "SELECT * FROM orders ORDER BY order_id")
    broken = tmp_path / "orders_in" / "orders-2024-03-07.csv"
    good = (tmp_path / "orders_in" / "orders-2024-03-06.csv").read_text()
    broken.write_text("order_id,when\n1,2024-03-07\n")

    second = run_here("run", str(EXAMPLES / "orders_etl.py:pipe"), "--resume")
    assert second.exit_code == 1
    assert query(
        tmp_path / "orders.db", "SELECT status, COUNT(*) FROM task_runs WHERE run_id = 2 GROUP BY 1"
    ) == [("error", 1), ("skipped", 6)]
    (message,) = query(
        tmp_path / "orders.db", "SELECT message FROM task_runs WHERE status = 'error'"
    )
    assert "missing column(s) ordered_at, customer" in message[0]

    broken.write_text(good.replace("2024-03-06", "2024-03-07"))
    third = run_here("run", str(EXAMPLES / "orders_etl.py:main"), "--resume")
    assert third.exit_code == 0, third.output
    assert query(
        tmp_path / "orders.db", "SELECT status, COUNT(*) FROM task_runs WHERE run_id = 3 GROUP BY 1"
    ) == [("done", 1), ("skipped", 6)]
    # Day 7 holds corrections of day 6's orders: they win, and nothing else changed.
    after = {r[0]: r for r in query(tmp_path / "orders.db", "SELECT * FROM orders")}
    changed = [r for r in before if after[r[0]] != r]
    assert changed and all(after[r[0]][-1] == "2024-03-07" for r in changed)
    assert "orders," in third.output and "rows rejected" in third.output


def test_orders_etl_loaded_twice_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    target = str(EXAMPLES / "orders_etl.py:pipe")
    assert run_here("run", target).exit_code == 0
    snapshot = query(tmp_path / "orders.db", "SELECT * FROM orders ORDER BY order_id")
    rejects = query(tmp_path / "orders.db", "SELECT * FROM rejects ORDER BY file, line")
    assert run_here("run", target).exit_code == 0
    assert query(tmp_path / "orders.db", "SELECT * FROM orders ORDER BY order_id") == snapshot
    assert query(tmp_path / "orders.db", "SELECT * FROM rejects ORDER BY file, line") == rejects
