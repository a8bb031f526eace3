"""Parameters, state, reruns and cached work on Dask workers (the executor tests' cluster)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests._harness import query
from tests.daytwo._tasks import make_cached, make_etl, make_incremental

if TYPE_CHECKING:
    from distributed import Client

pytestmark = pytest.mark.xdist_group("dask")


def test_state_params_rerun_and_cache_on_dask(tmp_path: Path, dask_client: Client) -> None:
    from pipeloom.executors.dask import DaskExecutor

    dask = DaskExecutor(client=dask_client)
    src = tmp_path / "source.db"
    conn = sqlite3.connect(src)
    conn.execute("CREATE TABLE source (id INTEGER PRIMARY KEY)")
    conn.executemany("INSERT INTO source (id) VALUES (?)", [(i,) for i in range(1, 31)])
    conn.commit()
    conn.close()
    db = tmp_path / "runs.db"
    pipe = make_incremental(db, executor=dask)
    assert pipe.run(progress=False, params={"source": src, "batch": "20"}).ok
    failed = pipe.run(progress=False, params={"source": src, "fail_after_set": "true"})
    assert not failed.ok
    assert query(db, "SELECT value FROM pipeloom_state") == [("20",)]  # discarded with it
    assert pipe.run(progress=False, params={"source": src, "batch": "20"}).ok
    assert query(db, "SELECT value FROM pipeloom_state") == [("30",)]
    assert query(db, "SELECT count(*), count(DISTINCT id) FROM target") == [(30, 30)]

    (tmp_path / "src").mkdir()
    for name, text in (("a.csv", "1\n"), ("b.csv", "2\n")):
        (tmp_path / "src" / name).write_text(text)
    etl = make_etl(tmp_path / "etl.db", ["a.csv", "b.csv"], executor=dask)
    paths = {"src": tmp_path / "src", "staged": tmp_path / "staged"}
    assert etl.run(progress=False, params=paths).ok
    rerun = etl.run(progress=False, params=paths, rerun=["parse:a.csv"])
    statuses = dict(
        query(
            tmp_path / "etl.db",
            "SELECT task_key, status FROM task_runs WHERE run_id = ?",
            rerun.run_id,
        )
    )
    assert (statuses["parse:a.csv"], statuses["parse:b.csv"]) == ("done", "skipped")
    assert statuses["summarise:all parse"] == "done"

    files = [tmp_path / "src" / "a.csv", tmp_path / "src" / "b.csv"]
    assert make_cached(tmp_path / "c.db", files, executor=dask).run(progress=False).ok
    second = make_cached(tmp_path / "c.db", files, executor=dask).run(progress=False)
    assert second.ok and second.extra["cached"] == 4
    (result,) = query(
        tmp_path / "c.db",
        "SELECT result FROM task_runs WHERE run_id = ? AND task_key = 'double:a.csv'",
        second.run_id,
    )
    assert json.loads(result[0]) == 2
