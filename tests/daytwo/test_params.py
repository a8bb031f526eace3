"""Parameters: declared defaults, typed overrides, stored on the run row, checked on resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeloom import PipelineError
from tests._harness import query
from tests.daytwo._tasks import make_params

_DEFAULTS = {
    "at": ["datetime", "2024-01-01 12:00:00"],
    "dry": ["bool", "False"],
    "limit": ["int", "10"],
    "name": ["str", "x"],
    "out": ["PosixPath", "out"],
    "ratio": ["float", "0.5"],
    "since": ["date", "2024-01-01"],
}


@pytest.mark.parametrize("executor", ["threads", "processes"])
def test_tasks_read_typed_parameters_and_the_run_row_stores_them(
    tmp_path: Path, executor: str
) -> None:
    db = tmp_path / "runs.db"
    pipe = make_params(db, executor=executor)
    given = {
        "since": "2024-06-01",
        "at": "2024-06-01T08:30:00",
        "limit": "25",
        "ratio": "0.25",
        "dry": "yes",
        "out": "data/out",
    }
    assert pipe.run(progress=False, params=given).ok
    results = {json.dumps(json.loads(r[0])) for r in query(db, "SELECT result FROM task_runs")}
    assert len(results) == 1
    assert json.loads(results.pop()) == {
        **_DEFAULTS,
        "since": ["date", "2024-06-01"],
        "at": ["datetime", "2024-06-01 08:30:00"],
        "limit": ["int", "25"],
        "ratio": ["float", "0.25"],
        "dry": ["bool", "True"],
        "out": ["PosixPath", "data/out"],
    }
    (stored,) = query(db, "SELECT params FROM pipeline_runs")
    assert json.loads(stored[0]) == {
        "since": "2024-06-01",
        "at": "2024-06-01T08:30:00",
        "limit": 25,
        "ratio": 0.25,
        "dry": True,
        "name": "x",
        "out": "data/out",
    }


def test_defaults_apply_when_nothing_is_given(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    assert make_params(db).run(progress=False).ok
    (result,) = query(db, "SELECT result FROM task_runs LIMIT 1")
    assert json.loads(result[0]) == _DEFAULTS


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (
            {"sinse": "2024-06-01"},
            "pipeline 'params': unknown parameter 'sinse' (value '2024-06-01'); declared "
            "parameters: at, dry, limit, name, out, ratio, since",
        ),
        ({"limit": "ten"}, "parameter limit='ten' is not a valid int"),
        ({"since": "June"}, "parameter since='June' is not a valid date"),
        ({"dry": "maybe"}, "parameter dry='maybe' is not a valid bool (use true or false)"),
        ({"limit": 2.5}, "parameter limit=2.5 is not a valid int (use a whole number)"),
    ],
)
def test_a_bad_parameter_is_one_line_naming_it(
    tmp_path: Path, given: dict[str, object], expected: str
) -> None:
    db = tmp_path / "runs.db"
    with pytest.raises(PipelineError) as caught:
        make_params(db).run(progress=False, params=given)
    text = str(caught.value)
    assert expected in text and "\n" not in text
    assert "declared parameters: at, dry, limit, name, out, ratio, since" in text
    assert not db.exists()  # refused before anything was written


def test_resume_with_other_parameters_is_refused_unless_allowed(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    pipe = make_params(db)
    first = pipe.run(progress=False, params={"limit": 5})
    assert first.ok
    with pytest.raises(PipelineError) as caught:
        pipe.run(progress=False, resume=True, params={"limit": 6, "dry": True})
    text = str(caught.value)
    assert (
        f"run {first.run_id} was made with other parameters (dry: False -> True; limit: 5 -> 6)"
        in text
    )
    assert "allow_param_change=True" in text and "\n" not in text
    same = pipe.run(progress=False, resume=True, params={"limit": 5})
    assert same.ok and same.extra["resumed_from"] == first.run_id
    forced = pipe.run(progress=False, resume=True, params={"limit": 6}, allow_param_change=True)
    assert forced.ok
    (request,) = query(db, "SELECT request FROM pipeline_runs WHERE id = ?", forced.run_id)
    assert json.loads(request[0]) == {"param_changes": ["limit: 5 -> 6"]}
    (params,) = query(db, "SELECT params FROM pipeline_runs WHERE id = ?", forced.run_id)
    assert json.loads(params[0])["limit"] == 6
