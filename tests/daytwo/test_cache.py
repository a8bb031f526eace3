"""Cached work across runs: unchanged input is not run again, its result still flows on."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pipeloom import Pipeline, PipelineError, fingerprint
from tests._harness import query
from tests.daytwo._tasks import make_cached


def _files(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "in"
    folder.mkdir()
    files = []
    for i in range(4):
        path = folder / f"f{i}.txt"
        path.write_text(f"{i} {i}\n")
        files.append(path)
    return files


def _rows(db: Path, run_id: int | None) -> dict[str, tuple[str, str | None, int | None]]:
    return {
        key: (status, result, cached_from)
        for key, status, result, cached_from in query(
            db,
            "SELECT task_key, status, result, cached_from_run FROM task_runs WHERE run_id = ?",
            run_id,
        )
    }


@pytest.mark.parametrize("executor", ["threads", "processes"])
def test_unchanged_work_comes_from_the_cache_and_a_changed_file_reruns_its_chain(
    tmp_path: Path, executor: str
) -> None:
    db, files = tmp_path / "runs.db", _files(tmp_path)
    first = make_cached(db, files, executor=executor).run(progress=False)
    assert first.ok and first.extra["cached"] == 0
    second = make_cached(db, files, executor=executor).run(progress=False)
    assert second.ok and second.extra["cached"] == 8
    rows = _rows(db, second.run_id)
    assert rows["total_of:f2.txt"] == ("done", "4", first.run_id)
    assert rows["double:f2.txt"] == ("done", "8", first.run_id)  # its result flowed on
    (message,) = query(
        db,
        "SELECT message FROM task_runs WHERE run_id = ? AND task_key = 'double:f2.txt'",
        second.run_id,
    )
    assert message[0].startswith(f"cached: result of run {first.run_id}, task ")

    if executor == "processes":
        return  # a pool per run costs seconds; what follows is decided on the driver
    files[2].write_text("10 20 30\n")  # one input changes
    third = make_cached(db, files, executor=executor).run(progress=False)
    rows = _rows(db, third.run_id)
    assert rows["total_of:f2.txt"] == ("done", "60", None)
    assert rows["double:f2.txt"] == ("done", "120", None)  # what it feeds runs again too
    assert rows["total_of:f1.txt"] == ("done", "2", first.run_id)
    assert third.extra["cached"] == 6


def test_refresh_version_and_ttl_run_it_again(tmp_path: Path) -> None:
    db, files = tmp_path / "runs.db", _files(tmp_path)
    assert make_cached(db, files).run(progress=False).ok
    refreshed = make_cached(db, files).run(progress=False, refresh=True)
    assert refreshed.extra["cached"] == 0
    (request,) = query(db, "SELECT request FROM pipeline_runs WHERE id = ?", refreshed.run_id)
    assert json.loads(request[0]) == {"refresh": True}
    # the refreshed run's own results serve the next run
    after = make_cached(db, files).run(progress=False)
    assert after.extra["cached"] == 8
    assert {r[2] for r in _rows(db, after.run_id).values()} == {refreshed.run_id}
    bumped = make_cached(db, files, version="2").run(progress=False)
    assert bumped.extra["cached"] == 4  # total_of's version changed; double's input did not

    pipe = Pipeline("ttl", db=db, workers=1)

    @pipe.task(cache=True, cache_ttl=0.01)
    def stamp(ctx: object, item: int) -> int:
        return item

    pipe.map(stamp, [1])
    assert pipe.run(progress=False).ok
    time.sleep(0.02)  # longer than the ttl, whatever the machine
    assert pipe.run(progress=False).extra["cached"] == 0


def test_file_fingerprints_and_bad_settings(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("1,2\n")
    stat_fp, content_fp = fingerprint.file(path), fingerprint.file(path, content=True)
    assert stat_fp.startswith("stat:4:") and content_fp.startswith("sha256:")
    path.write_text("1,3\n")  # same size; the content hash sees it
    assert fingerprint.file(path, content=True) != content_fp
    assert fingerprint.of({"b": 1, "a": Path("x")}) == fingerprint.of({"a": "x", "b": 1})
    pipe = Pipeline("bad", db=tmp_path / "runs.db")
    with pytest.raises(PipelineError, match="cache_ttl=-1; use seconds > 0"):
        pipe.task(lambda ctx, item: item, name="t", cache=True, cache_ttl=-1)
    with pytest.raises(PipelineError, match="cache_key='size'; pass a function of the item"):
        pipe.task(lambda ctx, item: item, name="u", cache=True, cache_key="size")  # type: ignore[call-overload]


def test_observe_shows_where_a_cached_tasks_result_came_from(tmp_path: Path) -> None:
    import asyncio

    from pipeloom_observe.app import build_datasette

    db, files = tmp_path / "runs.db", _files(tmp_path)
    first = make_cached(db, files).run(progress=False)
    second = make_cached(db, files).run(progress=False)
    ((task_id, source_task),) = query(
        db,
        "SELECT task_id, cached_from_task FROM task_runs WHERE run_id = ? AND task_key = ?",
        second.run_id,
        "double:f2.txt",
    )

    async def page() -> str:
        ds = build_datasette(db)
        await ds.invoke_startup()
        response = await ds.client.get(f"/-/pipeloom/runs/task/{second.run_id}/{task_id}")
        assert response.status_code == 200, response.text
        return str(response.text)

    text = asyncio.run(page())
    assert "not run here: cached" in text
    assert f"/task/{first.run_id}/{source_task}" in text  # a link to the task it came from


def test_cached_tasks_are_counted_apart_in_the_bar_and_the_summary(tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from pipeloom.progress import LiveDisplay
    from pipeloom.writer import AppliedBatch

    db, files = tmp_path / "runs.db", _files(tmp_path)
    make_cached(db, files).run(progress=False)
    out = io.StringIO()
    second = make_cached(db, files).run(console=Console(file=out, width=100))
    assert second.extra["cached"] == 8
    summary = out.getvalue()
    (row,) = [line for line in summary.splitlines() if "of which cached" in line]
    assert row.replace("│", " ").split()[-1] == "8"

    screen = Console(file=io.StringIO(), force_terminal=True, width=80)
    display = LiveDisplay(3, console=screen, title="daily", counts=lambda: {"cached": 2})
    display(AppliedBatch(finished=[(1, "done"), (2, "done")]))
    (overall,) = display.overall.tasks
    assert overall.description == "daily (2 cached)"
