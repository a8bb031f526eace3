"""Failures across runs: grouped by error type and normalised message, read in one snapshot,
as a table and as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeloom import Pipeline
from pipeloom.failures import failure_groups, normalise, split_error
from pipeloom.history import HistoryReader
from tests.core import _unattended_tasks as tasks


@pytest.mark.parametrize(
    ("message", "pattern"),
    [
        ("bad row 17 in '/data/a.csv'", "bad row <n> in <str>"),
        ("cannot open data/x/part-3.csv: errno 2", "cannot open <path>: errno <n>"),
        ("user 6f1e2d3c-1a2b-3c4d-5e6f-112233445566 missing", "user <id> missing"),
        ("HTTP 503 from https://api.example.com/v1?page=3", "HTTP <n> from <url>"),
        ('key "order-9" not found after 2.5s', "key <str> not found after <n>s"),
        ("object at 0x7f00ab12 has no attribute", "object at <id> has no attribute"),
    ],
)
def test_normalise_replaces_what_varies(message: str, pattern: str) -> None:
    assert normalise(message) == pattern


def test_split_error_reads_the_last_line_of_a_traceback() -> None:
    text = "Traceback (most recent call last):\n  File x\nrequests.HTTPError: 503 Error\n"
    assert split_error(text) == ("HTTPError", "503 Error")
    assert split_error("just words: here") == ("", "just words: here")
    assert split_error(None) == ("", "")


def _runs(db: Path) -> list[int]:
    ids = []
    for name, items in (("nightly", range(1, 7)), ("nightly", range(1, 4)), ("other", [3])):
        pipe = Pipeline(name, db=db, workers=2)
        pipe.map(tasks.every_third_fails, items)
        result = pipe.run(progress=False)
        assert result.run_id is not None
        ids.append(result.run_id)
    return ids


def test_failures_grouped_over_runs(tmp_path: Path) -> None:
    db = tmp_path / "f.db"
    *_, other = _runs(db)
    with HistoryReader(db) as reader, reader.snapshot() as snap:
        groups = failure_groups(snap, db_label=str(db))
        (nightly,) = failure_groups(snap, pipeline="nightly", since_days=1, db_label=str(db))
    (group,) = groups
    assert (group.error_type, group.pattern) == ("ValueError", "bad row <n> in <str>")
    assert (group.count, group.runs, sorted(group.pipelines)) == (4, 3, ["nightly", "other"])
    assert group.first_seen is not None and group.last_seen is not None
    assert group.first_seen <= group.last_seen
    assert group.example_run == other and group.example_task == "every_third_fails:3"
    assert group.example_error == "ValueError: bad row 3 in '/data/part-3.csv'"
    assert group.example_command == f"pipeloom status {db} --run {other} --task every_third_fails:3"
    assert (nightly.count, nightly.runs) == (3, 2)


def test_cli_failures_table_and_json(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    _runs(db)
    cli = [sys.executable, "-m", "pipeloom_cli", "status", str(db), "--failures"]
    wide = {**os.environ, "COLUMNS": "200"}
    shown = subprocess.run(
        [*cli, "--since", "7d"], capture_output=True, text=True, timeout=60, env=wide
    )
    assert shown.returncode == 0, shown.stderr
    assert "ValueError: bad row <n> in <str>" in shown.stdout
    assert "4 failed task(s) in 1 group(s)" in shown.stdout
    doc = subprocess.run(
        [*cli, "--pipeline", "other", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert doc.returncode == 0, doc.stderr
    parsed = json.loads(doc.stdout)
    assert parsed["failed_tasks"] == 1 and parsed["groups"][0]["pipelines"] == ["other"]
    bad = subprocess.run(
        [sys.executable, "-m", "pipeloom_cli", "status", str(db), "--since", "7d"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "add --failures" in bad.stderr
