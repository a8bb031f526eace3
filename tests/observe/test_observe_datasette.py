from __future__ import annotations

import re
import shutil
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import pipeloom_observe
from pipeloom.errors import DatabaseError
from pipeloom_observe.metadata import DASHBOARD, QUERIES, MetadataError, load_metadata
from tests.observe._observe_support import (
    ERROR_LINE,
    FAILED_TASK,
    TRACEBACK,
    make_seed_db,
    rows,
    sha256,
    started,
)

if TYPE_CHECKING:
    pass


@pytest.mark.parametrize(
    "page",
    [
        "/",
        "/nightly",
        "/nightly/pipeline_runs",
        "/nightly/pipeline_runs/2",
        "/nightly/task_runs",
        "/nightly/task_runs?run_id=2",
        "/nightly/task_attempts",
        "/nightly/dead_letters",
        *(f"/nightly/{name}" for name in QUERIES),
        f"/-/dashboards/{DASHBOARD}",
    ],
)
async def test_pages_answer(run_db: Path, page: str) -> None:
    ds = await started(run_db)
    response = await ds.client.get(page)
    assert response.status_code == 200


async def test_the_home_page_links_to_the_first_questions(run_db: Path) -> None:
    ds = await started(run_db)
    home = (await ds.client.get("/")).text
    targets = re.findall(r'<a href="(/nightly/[a-z_]+|/-/dashboards/[a-z-]+)">', home)
    assert {f"/nightly/{name}" for name in QUERIES} <= set(targets)
    assert f"/-/dashboards/{DASHBOARD}" in targets
    for target in targets:
        assert (await ds.client.get(target)).status_code == 200, target


async def test_latest_run_summarises_the_newest_run(run_db: Path) -> None:
    ds = await started(run_db)
    [latest] = await rows(ds, "/nightly/latest_run.json?_shape=array")
    assert latest["run_id"] == 2
    assert latest["name"] == "nightly"
    assert latest["status"] == "error"
    assert (latest["tasks"], latest["done"], latest["failed"], latest["in_flight"]) == (6, 5, 1, 0)


async def test_failures_lists_the_failed_task_with_its_error(run_db: Path) -> None:
    ds = await started(run_db)
    failures = await rows(ds, "/nightly/failures.json?_shape=array")
    assert [(f["run_id"], f["task_id"], f["status"]) for f in failures] == [
        (2, FAILED_TASK, "error")
    ]
    assert failures[0]["message"] == ERROR_LINE
    assert failures[0]["error"] == TRACEBACK


async def test_slowest_tasks_are_ordered_by_duration(run_db: Path) -> None:
    ds = await started(run_db)
    slowest = await rows(ds, "/nightly/slowest_tasks.json?_shape=array")
    # Task k of a run takes k + 1 seconds; the newest run (2) has tasks 0-5.
    assert [(s["run_id"], s["task_id"], s["seconds"]) for s in slowest[:4]] == [
        (2, 5, 6.0),
        (2, 4, 5.0),
        (2, 3, 4.0),
        (2, 2, 3.0),
    ]
    assert len(slowest) == 6
    older = await rows(ds, "/nightly/slowest_tasks.json?_shape=array&run_id=1")
    assert [(s["run_id"], s["task_id"], s["seconds"]) for s in older] == [(1, 1, 2.0), (1, 0, 1.0)]


async def test_tasks_per_minute_counts_finished_tasks_of_one_run(run_db: Path) -> None:
    ds = await started(run_db)
    minutes = await rows(ds, "/nightly/tasks_per_minute.json?_shape=array")
    assert minutes == [
        {"minute": "2026-01-01T10:00", "tasks": 3, "done": 3, "failed": 0},
        {"minute": "2026-01-01T10:01", "tasks": 3, "done": 2, "failed": 1},
    ]
    first = await rows(ds, "/nightly/tasks_per_minute.json?_shape=array&run_id=1")
    assert first == [{"minute": "2026-01-01T10:00", "tasks": 2, "done": 2, "failed": 0}]


async def test_tables_are_sorted_newest_first_with_facets(run_db: Path) -> None:
    ds = await started(run_db)
    runs = await ds.client.get("/nightly/pipeline_runs.json?_shape=objects")
    assert [r["id"] for r in runs.json()["rows"]] == [2, 1]
    assert set(runs.json()["facet_results"]) >= {"status"}
    tasks = await ds.client.get("/nightly/task_runs.json?_shape=objects")
    assert tasks.json()["rows"][0]["run_id"] == 2
    assert set(tasks.json()["facet_results"]) >= {"status", "run_id"}


async def test_a_run_page_links_to_its_tasks(run_db: Path) -> None:
    ds = await started(run_db)
    page = (await ds.client.get("/nightly/pipeline_runs/2")).text
    assert 'href="/nightly/task_runs?run_id=2"' in page
    assert "6 rows" in page
    tasks = (await ds.client.get("/nightly/task_runs?run_id=2")).text
    # The run column is labelled with the run's name, through the foreign key.
    assert "nightly" in tasks
    assert ERROR_LINE in tasks


async def test_the_chart_plugin_loads_with_local_assets(run_db: Path) -> None:
    ds = await started(run_db)
    plugins = (await ds.client.get("/-/plugins.json")).json()
    assert "datasette-dashboards" in {p["name"] for p in plugins}
    page = (await ds.client.get(f"/-/dashboards/{DASHBOARD}")).text
    assert 'id="chart-gantt"' in page
    for asset in ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js", "dashboards.js"):
        path = f"/-/static-plugins/datasette_dashboards/{asset}"
        assert path in page
        assert (await ds.client.get(path)).status_code == 200


async def test_no_write_or_upload_plugin_is_installed(run_db: Path) -> None:
    ds = await started(run_db)
    plugins = {p["name"] for p in (await ds.client.get("/-/plugins.json")).json()}
    risky = ("write", "upload", "insert", "edit", "import", "delete", "auth-tokens")
    assert not [name for name in plugins if any(word in name for word in risky)]


async def test_a_runaway_query_is_stopped_by_the_time_limit(run_db: Path) -> None:
    ds = await started(run_db)
    settings = (await ds.client.get("/-/settings.json")).json()
    assert 0 < settings["sql_time_limit_ms"] <= 5_000
    endless = (
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT COUNT(*) FROM n"
    )
    # The configured limit is checked above; the query asks for a tenth of a second of it
    # (Datasette's ``_timelimit`` only ever lowers the configured limit, through the same
    # interrupt), so the test does not burn 3 s of CPU proving the same stop.
    response = await ds.client.get("/nightly.json", params={"sql": endless, "_timelimit": 100})
    assert response.status_code == 400
    assert "took too long" in response.text


async def test_browsing_never_writes_to_the_file(tmp_path: Path, run_db: Path) -> None:
    path = tmp_path / "nightly.db"
    shutil.copy(run_db, path)
    before = sha256(path)
    ds = await started(path)
    for page in ("/nightly/task_runs", "/nightly/failures", "/nightly/pipeline_runs/2"):
        assert (await ds.client.get(page)).status_code == 200
    attempt = await ds.client.get("/nightly.json", params={"sql": "DELETE FROM task_runs"})
    assert attempt.status_code == 400
    ds.databases["nightly"].close()
    assert sha256(path) == before
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM task_runs").fetchone() == (8,)
    conn.close()


async def test_metadata_is_keyed_by_the_files_stem(tmp_path: Path, run_db: Path) -> None:
    path = tmp_path / "other-name.db"
    shutil.copy(run_db, path)
    ds = await started(path)
    assert len(await rows(ds, "/other-name/failures.json?_shape=array")) == 1


async def test_extra_metadata_is_merged_over_the_defaults(run_db: Path) -> None:
    extra = {
        "title": "Warehouse loads",
        "databases": {"nightly": {"queries": {"errors_only": "SELECT error FROM task_runs"}}},
    }
    extra["description"] = "Loads into the warehouse, one run per night."
    ds = await started(run_db, extra)
    home = (await ds.client.get("/")).text
    assert "Warehouse loads" in home
    assert "Loads into the warehouse, one run per night." in home
    assert len(await rows(ds, "/nightly/errors_only.json?_shape=array")) == 8
    assert len(await rows(ds, "/nightly/failures.json?_shape=array")) == 1


@pytest.mark.parametrize(
    ("name", "text"),
    [
        (
            "extra.yml",
            "title: Warehouse loads\ndatabases:\n  nightly:\n    description: Nightly ETL\n",
        ),
        (
            "extra.json",
            '{"title": "Warehouse loads",'
            ' "databases": {"nightly": {"description": "Nightly ETL"}}}',
        ),
    ],
)
async def test_metadata_files_load_as_yaml_or_json(
    tmp_path: Path, run_db: Path, name: str, text: str
) -> None:
    extra = tmp_path / name
    extra.write_text(text)
    ds = await started(run_db, load_metadata(extra))
    assert "Warehouse loads" in (await ds.client.get("/")).text
    assert "Nightly ETL" in (await ds.client.get("/nightly")).text


def test_unreadable_metadata_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match="cannot read metadata"):
        load_metadata(tmp_path / "missing.yml")
    broken = tmp_path / "broken.yml"
    broken.write_text("title: [unclosed\n")
    with pytest.raises(MetadataError, match="not valid YAML"):
        load_metadata(broken)


async def test_a_sqlite_file_without_pipeloom_tables_opens_with_a_note(tmp_path: Path) -> None:
    path = tmp_path / "inventory.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, sku TEXT)")
    conn.commit()
    conn.close()
    ds = await started(path)
    page = await ds.client.get("/inventory")
    assert page.status_code == 200
    assert "has no pipeloom tables" in page.text
    assert (await ds.client.get("/inventory/items")).status_code == 200


async def test_an_old_layout_opens_with_a_note_to_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "seed.db"
    make_seed_db(path, rows=3)
    ds = await started(path)
    page = await ds.client.get("/seed")
    assert page.status_code == 200
    assert "pipeloom db upgrade" in page.text
    assert (await ds.client.get("/seed/task_runs")).status_code == 200


def test_a_missing_file_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "typo.db"
    with pytest.raises(DatabaseError, match="no such database file"):
        pipeloom_observe.build_datasette(path)
    assert not path.exists()


def test_a_file_that_is_not_sqlite_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    path.write_bytes(b"PK\x03\x04 a zip file, not a database" * 50)
    with pytest.raises(DatabaseError, match="is not a SQLite database"):
        pipeloom_observe.build_datasette(path)


@pytest.mark.parametrize(
    ("host", "warns"),
    [
        ("127.0.0.1", False),
        ("localhost", False),
        ("::1", False),
        ("0.0.0.0", True),
        ("192.168.1.20", True),
        ("myhost.example", True),
    ],
)
def test_only_loopback_hosts_are_quiet(host: str, warns: bool) -> None:
    from pipeloom_observe.app import exposure_warning

    warning = exposure_warning(host)
    assert (warning is not None) == warns
    if warning:
        assert "anyone who can reach this port can read" in warning
