"""Rerun a selection and everything downstream; everything else is skipped as on resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeloom import PipelineError
from tests._harness import query
from tests.daytwo._tasks import make_etl

FILES = ["a.csv", "b.csv", "c.csv"]


def _setup(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.csv").write_text("1\n2\n")
    (src / "b.csv").write_text("3\nx\n")  # corrupt
    (src / "c.csv").write_text("5\n")
    return {"src": src, "staged": tmp_path / "staged"}


def _statuses(db: Path, run_id: int | None) -> dict[str, str]:
    return dict(query(db, "SELECT task_key, status FROM task_runs WHERE run_id = ?", run_id))


@pytest.mark.parametrize("executor", ["threads", "processes"])
def test_rerun_a_fixed_download_and_what_consumes_it(tmp_path: Path, executor: str) -> None:
    db, params = tmp_path / "runs.db", _setup(tmp_path)
    pipe = make_etl(db, FILES, executor=executor)
    first = pipe.run(progress=False, params=params)
    assert not first.ok
    (params["src"] / "b.csv").write_text("3\n4\n")  # the source is fixed
    # a plain resume re-parses the stale staged copy and fails the same way
    again = pipe.run(progress=False, params=params, resume=True)
    assert _statuses(db, again.run_id)["parse:b.csv"] == "error"

    fixed = pipe.run(progress=False, params=params, rerun=["download:b.csv"])
    assert fixed.ok
    assert _statuses(db, fixed.run_id) == {
        "download:a.csv": "skipped",
        "download:b.csv": "done",
        "download:c.csv": "skipped",
        "parse:a.csv": "skipped",
        "parse:b.csv": "done",
        "parse:c.csv": "skipped",
        "summarise:all parse": "done",
    }
    (result,) = query(
        db,
        "SELECT result FROM task_runs WHERE run_id = ? AND task_key = ?",
        fixed.run_id,
        "summarise:all parse",
    )
    assert json.loads(result[0]) == 5
    (request,) = query(db, "SELECT request FROM pipeline_runs WHERE id = ?", fixed.run_id)
    assert json.loads(request[0]) == {"rerun": ["download:b.csv"]}

    # a whole stage again: its rows are replaced, never added to
    whole = pipe.run(progress=False, params=params, rerun=["parse"])
    statuses = _statuses(db, whole.run_id)
    assert [statuses[f"parse:{f}"] for f in FILES] == ["done"] * 3
    assert [statuses[f"download:{f}"] for f in FILES] == ["skipped"] * 3
    assert statuses["summarise:all parse"] == "done"
    assert query(db, "SELECT source, value FROM etl_values ORDER BY source, value") == [
        ("a.csv", 1),
        ("a.csv", 2),
        ("b.csv", 3),
        ("b.csv", 4),
        ("c.csv", 5),
    ]


def test_from_a_stage_and_key_globs(tmp_path: Path) -> None:
    db, params = tmp_path / "runs.db", _setup(tmp_path)
    (params["src"] / "b.csv").write_text("3\n")
    pipe = make_etl(db, FILES)
    assert pipe.run(progress=False, params=params).ok
    glob = pipe.run(progress=False, params=params, rerun=["download:[ab].csv"])
    statuses = _statuses(db, glob.run_id)
    assert [statuses[f"parse:{f}"] for f in FILES] == ["done", "done", "skipped"]
    downstream = pipe.run(progress=False, params=params, rerun_from="summarise")
    statuses = _statuses(db, downstream.run_id)
    assert statuses.pop("summarise:all parse") == "done"
    assert set(statuses.values()) == {"skipped"}
    (request,) = query(db, "SELECT request FROM pipeline_runs WHERE id = ?", downstream.run_id)
    assert json.loads(request[0]) == {"from": "summarise"}


def test_a_pattern_that_matches_nothing_is_one_line_listing_the_stages(tmp_path: Path) -> None:
    db, params = tmp_path / "runs.db", _setup(tmp_path)
    pipe = make_etl(db, FILES)
    with pytest.raises(PipelineError, match="holds no earlier run of it"):
        pipe.run(progress=False, params=params, rerun=["parse"])
    pipe.run(progress=False, params=params)
    runs = query(db, "SELECT count(*) FROM pipeline_runs")
    for pattern, expected in [
        ("prase", "--rerun 'prase' matches no stage; its stages: download, parse, summarise"),
        ("parse:z*", "--rerun 'parse:z*' matches no task key of run 1; its stages: download, "),
        ("load:a.csv", "--rerun 'load:a.csv' names no stage of it; its stages: download, "),
    ]:
        with pytest.raises(PipelineError) as caught:
            pipe.run(progress=False, params=params, rerun=[pattern])
        assert expected in str(caught.value) and "\n" not in str(caught.value)
    assert query(db, "SELECT count(*) FROM pipeline_runs") == runs  # nothing was started
