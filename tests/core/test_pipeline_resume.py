from pathlib import Path

import pytest

from pipeloom import Context, Pipeline, PipelineError
from tests._harness import query


def make_pipeline(db: Path, broken: set[int], ran: list[int]) -> Pipeline:
    pipe = Pipeline("nightly", db=db, workers=3)

    @pipe.task
    def load(ctx: Context, n: int) -> int:
        ran.append(n)
        if n in broken:
            raise OSError(f"partition {n} is not there yet")
        return n * 10

    pipe.map(load, range(1, 11))
    return pipe


def test_resume_runs_only_what_failed(tmp_path: Path) -> None:
    db = tmp_path / "n.db"
    broken = {3, 6, 9}
    ran: list[int] = []
    pipe = make_pipeline(db, broken, ran)

    first = pipe.run(progress=False)
    assert first.counts == {"done": 7, "error": 3}
    assert sorted(ran) == list(range(1, 11))

    broken.clear()
    ran.clear()
    second = pipe.run(progress=False, resume=True)

    assert sorted(ran) == [3, 6, 9]
    assert second.ok
    assert second.counts == {"done": 3, "skipped": 7}
    assert second.extra["resumed_from"] == first.run_id
    history = query(
        db,
        "SELECT task_key, status, message, result FROM task_runs WHERE run_id = ? ORDER BY task_id",
        second.run_id,
    )
    assert [s for _, s, _, _ in history].count("skipped") == 7
    assert [(k, s) for k, s, _, _ in history if s == "done"] == [
        ("load:3", "done"),
        ("load:6", "done"),
        ("load:9", "done"),
    ]
    skipped = [(m, r) for _, s, m, r in history if s == "skipped"]
    assert set(skipped) == {(f"skipped: done in run {first.run_id}", '{"done_in_run": 1}')}
    # A skipped task's work is complete (done earlier), so its bar reads 100%.
    assert query(
        db,
        "SELECT DISTINCT progress FROM task_runs WHERE run_id = ? AND status = 'skipped'",
        second.run_id,
    ) == [(1.0,)]
    # The first run's history is kept as it was.
    assert query(db, "SELECT status, count(*) FROM task_runs WHERE run_id = 1 GROUP BY status") == [
        ("done", 7),
        ("error", 3),
    ]
    assert query(db, "SELECT id, status, params FROM pipeline_runs ORDER BY id") == [
        (1, "error", "{}"),
        (2, "done", '{"resumed_from": 1}'),
    ]


def test_resuming_a_resumed_run_points_at_the_run_that_did_the_work(tmp_path: Path) -> None:
    db = tmp_path / "n.db"
    ran: list[int] = []
    pipe = make_pipeline(db, {5}, ran)
    pipe.run(progress=False)
    pipe.run(progress=False, resume=True)  # 5 fails again
    ran.clear()
    pipe.run(progress=False, resume=2)  # run 2 skipped 9 keys (done in run 1)

    assert ran == [5]
    messages = query(db, "SELECT DISTINCT message FROM task_runs WHERE run_id = 3")
    assert sorted(messages) == [
        ("OSError: partition 5 is not there yet",),
        ("skipped: done in run 1",),
    ]


def test_resume_by_id_skips_what_that_run_did(tmp_path: Path) -> None:
    db = tmp_path / "n.db"
    ran: list[int] = []
    pipe = make_pipeline(db, set(), ran)
    pipe.run(progress=False)
    ran.clear()
    result = pipe.run(progress=False, resume=1)
    assert ran == []
    assert result.counts == {"skipped": 10}


def test_resume_of_a_missing_run_is_a_clear_error_and_records_nothing(tmp_path: Path) -> None:
    db = tmp_path / "n.db"
    pipe = make_pipeline(db, set(), [])
    pipe.run(progress=False)
    with pytest.raises(PipelineError, match=r"has no run 42 to resume \(runs go up to 1\)"):
        pipe.run(progress=False, resume=42)
    with pytest.raises(PipelineError, match="no such database"):
        pipe.run(db=tmp_path / "other.db", progress=False, resume=1)
    assert query(db, "SELECT count(*) FROM pipeline_runs") == [(1,)]


def test_resume_true_without_history_runs_everything(tmp_path: Path) -> None:
    ran: list[int] = []
    pipe = make_pipeline(tmp_path / "new.db", set(), ran)
    assert pipe.run(progress=False, resume=True).counts == {"done": 10}
    assert len(ran) == 10
