"""pipeloom's own pages: the runs (home), failures across runs, one run, two runs compared.

Routes (``DB`` is the database's name, the file's stem):

- ``/`` and ``/-/pipeloom/DB/runs``: the runs, filtered by pipeline, status group and dates;
- ``/-/pipeloom/DB/failures``: failed tasks across runs, grouped by error;
- ``/-/pipeloom/DB/run/RUN_ID``: one run (stage lanes, failures, retried, slowest), following a
  live run by polling ``/-/pipeloom/DB/run/RUN_ID.json``;
- ``/-/pipeloom/DB/run/RUN_ID/tasks``: a stage's tasks in a time window;
- ``/-/pipeloom/DB/compare?a=RUN&b=RUN``: two runs of a pipeline side by side.

They show no SQL; each links to the raw table or canned query behind it. What they read is in
`pipeloom_observe.plugin.history`, bounded so that no page reads every task row.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any, Final
from urllib.parse import urlencode

from datasette.utils import tilde_decode, tilde_encode
from datasette.utils.asgi import BadRequest, NotFound, Response
from markupsafe import Markup

from pipeloom.status import STOP_TEXT
from pipeloom_observe.colors import STATUS_COLORS
from pipeloom_observe.plugin import history
from pipeloom_observe.plugin._web import (
    MAX_ID,
    format_duration,
    format_time,
    id_param,
    status_badge,
)

__all__ = ["CONFIG_KEY", "ROUTES", "page_url", "run_database"]

CONFIG_KEY: Final = "pipeloom"
"""The ``plugins`` key of the metadata naming the run database (set by `default_metadata`)."""

CLOCK_NOTE: Final = "Times are UTC, 24-hour."


def page_url(datasette: Any, database: str, page: str) -> str:
    """``/-/pipeloom/DB/PAGE``, prefixed as Datasette is mounted."""
    return str(datasette.urls.path(f"/-/pipeloom/{tilde_encode(database)}/{page}"))


def run_database(datasette: Any) -> str | None:
    """The database whose runs the pages show; None for a file of another layout."""
    config = datasette.plugin_config(CONFIG_KEY) or {}
    name = config.get("database")
    return str(name) if name and name in datasette.databases else None


def _database(datasette: Any, request: Any) -> tuple[str, Any]:
    name = tilde_decode(request.url_vars["database"])
    if name != run_database(datasette):
        raise NotFound(
            f"{name} is not a run database of the current pipeloom layout "
            "(pipeloom db info FILE says why)"
        )
    return name, datasette.get_database(name)


def _date(request: Any, name: str) -> date | None:
    text = request.args.get(name, "").strip()
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"{name} {text[:40]!r}: use a date as YYYY-MM-DD") from None


def _filter(request: Any) -> history.RunFilter:
    status = request.args.get("status", "")
    if status not in history.RUN_FILTERS:
        raise BadRequest(
            f"status {status[:40]!r}: use one of {', '.join(repr(s) for s in history.RUN_FILTERS)}"
        )
    return history.RunFilter(
        pipeline=request.args.get("pipeline", "")[:200],
        status=status,
        since=_date(request, "since"),
        until=_date(request, "until"),
    )


def _here(request: Any) -> Any:
    """``here(key=value)``: this page's URL with some query parameters changed ('' drops one)."""
    args = {key: request.args.get(key) for key in request.args}

    def here(**changes: Any) -> str:
        merged = {**args, **{key: str(value) for key, value in changes.items()}}
        return "?" + urlencode({key: value for key, value in merged.items() if value != ""})

    return here


def _context(datasette: Any, database: str, **extra: Any) -> dict[str, Any]:
    """What every page's template uses: links, formatting, colors."""

    def link(page: str, **args: Any) -> str:
        query = urlencode({key: value for key, value in args.items() if value not in ("", None)})
        return page_url(datasette, database, page) + (f"?{query}" if query else "")

    return {
        "database": database,
        "link": link,
        "db_url": datasette.urls.database(database),
        "table_url": lambda table: datasette.urls.table(database, table),
        "task_url": lambda run_id, task_id: page_url(
            datasette, database, f"task/{run_id}/{task_id}"
        ),
        "run_page": lambda run_id: page_url(datasette, database, f"run/{run_id}"),
        "badge": status_badge,
        "fmt_time": lambda value: format_time(value) if value else "",
        "fmt_duration": lambda value: format_duration(float(value)) if value is not None else "",
        "clock_note": CLOCK_NOTE,
        "colors": STATUS_COLORS,
        **extra,
    }


async def home(datasette: Any, request: Any) -> Response:
    """``/``: the runs of the run database; Datasette's own index for any other file."""
    database = run_database(datasette)
    if database is None:
        from datasette.views.index import IndexView

        # Datasette's index reads its format from the route it would have matched.
        request.scope["url_route"] = {"kwargs": {"format": None}}
        response: Response = await IndexView(datasette).dispatch_request(request)
        return response
    return await _runs(datasette, request, database)


async def runs_page(datasette: Any, request: Any) -> Response:
    """``/-/pipeloom/DB/runs``: the same page as the home page."""
    database, _db = _database(datasette, request)
    return await _runs(datasette, request, database)


async def _runs(datasette: Any, request: Any, database: str) -> Response:
    db = datasette.get_database(database)
    where = _filter(request)
    before = request.args.get("before")
    page = await history.run_list(
        db, where, before=history_id(request, "before") if before else None
    )
    context = _context(
        datasette,
        database,
        filters=where,
        page=page,
        pipelines=await history.pipelines(db),
        statuses=history.RUN_FILTERS,
        stop_text=STOP_TEXT,
        here=_here(request),
        oldest_first=page["runs"][::-1],
        peak=max((run["duration_s"] or 0 for run in page["runs"]), default=0) or 1,
        title=datasette.metadata("title") or "pipeloom run history",
        description_html=Markup(datasette.metadata("description_html") or ""),
        description=datasette.metadata("description") or "",
    )
    html = await datasette.render_template("pipeloom_runs.html", context, request=request)
    return Response.html(html)


def history_id(request: Any, name: str) -> int:
    """A whole-number URL parameter, checked by the plugin's one parser."""
    return id_param(request, name, low=1, high=MAX_ID)


async def failures_page(datasette: Any, request: Any) -> Response:
    """``/-/pipeloom/DB/failures``: what failed across runs, grouped by error."""
    database, db = _database(datasette, request)
    where = _filter(request)
    found = await history.failure_groups(db, where)
    days = history.days_between(found["days"])
    peak = max((n for group in found["groups"] for n in group["per_day"].values()), default=1)
    context = _context(
        datasette,
        database,
        filters=where,
        found=found,
        days=days,
        peak=peak,
        pipelines=await history.pipelines(db),
        statuses=history.RUN_FILTERS,
        here=_here(request),
        limit=history.FAILURE_RUNS,
    )
    html = await datasette.render_template("pipeloom_failures.html", context, request=request)
    return Response.html(html)


async def _detail(datasette: Any, request: Any) -> tuple[str, int, dict[str, Any]]:
    database, db = _database(datasette, request)
    run_id = history_id(request, "run_id")
    detail = await history.run_detail(db, run_id)
    if detail is None:
        raise NotFound(f"{database} has no run {run_id}")
    return database, run_id, detail


async def run_page(datasette: Any, request: Any) -> Response:
    """``/-/pipeloom/DB/run/RUN_ID``: one run; the page follows a live run through its JSON."""
    database, run_id, detail = await _detail(datasette, request)
    db = datasette.get_database(database)
    previous = await history.previous_run(db, run_id)
    context = _context(
        datasette,
        database,
        detail=detail,
        run=detail["run"],
        previous=previous,
        data=Markup(json.dumps(detail, default=str).replace("</", "<\\/")),
        json_url=page_url(datasette, database, f"run/{run_id}.json"),
        tasks_url=page_url(datasette, database, f"run/{run_id}/tasks"),
        task_base=page_url(datasette, database, f"task/{run_id}/"),
        script_url=datasette.urls.static_plugins(_plugin_name(), "pipeloom_run.js"),
    )
    html = await datasette.render_template("pipeloom_run.html", context, request=request)
    return Response.html(html)


def _plugin_name() -> str:
    return __name__.rsplit(".", 1)[0]


async def run_json(datasette: Any, request: Any) -> Response:
    """``/-/pipeloom/DB/run/RUN_ID.json``: what the run page polls (small: one run's aggregates)."""
    _database_name, _run_id, detail = await _detail(datasette, request)
    return Response.json(detail, default=str)


async def tasks_page(datasette: Any, request: Any) -> Response:
    """``/-/pipeloom/DB/run/RUN_ID/tasks``: a stage's tasks in a time window, paged."""
    database, db = _database(datasette, request)
    run_id = history_id(request, "run_id")
    page = id_or_zero(request, "page")
    stage = request.args.get("stage")
    found = await history.stage_tasks(
        db,
        run_id,
        stage=stage,
        since=request.args.get("from") or None,
        until=request.args.get("to") or None,
        status=request.args.get("status") or None,
        page=page,
    )
    context = _context(
        datasette,
        database,
        run_id=run_id,
        found=found,
        stage=stage,
        here=_here(request),
        since=request.args.get("from", ""),
        until=request.args.get("to", ""),
        status=request.args.get("status", ""),
    )
    html = await datasette.render_template("pipeloom_tasks.html", context, request=request)
    return Response.html(html)


def id_or_zero(request: Any, name: str) -> int:
    """A page number: 0 when absent."""
    if not request.args.get(name):
        return 0
    return id_param(request, name, low=0, high=100_000)


async def compare_page(datasette: Any, request: Any) -> Response:
    """``/-/pipeloom/DB/compare?a=RUN&b=RUN``: b defaults to the newest run, a to b's previous."""
    database, db = _database(datasette, request)
    if request.args.get("b"):
        b = history_id(request, "b")
    else:
        newest = await db.execute("SELECT MAX(id) FROM pipeline_runs")
        b = int(newest.rows[0][0] or 0)
    a = history_id(request, "a") if request.args.get("a") else await history.previous_run(db, b)
    compared = await history.compare_runs(db, a, b) if a else None
    if compared is not None and (compared["a"] is None or compared["b"] is None):
        raise NotFound(f"{database} has no run {a if compared['a'] is None else b}")
    context = _context(datasette, database, a=a, b=b, compared=compared)
    html = await datasette.render_template("pipeloom_compare.html", context, request=request)
    return Response.html(html)


ROUTES: Final = [
    (r"^/$", home),
    (r"^/-/pipeloom/(?P<database>[^/]+)/runs$", runs_page),
    (r"^/-/pipeloom/(?P<database>[^/]+)/failures$", failures_page),
    (r"^/-/pipeloom/(?P<database>[^/]+)/run/(?P<run_id>[^/]*)\.json$", run_json),
    (r"^/-/pipeloom/(?P<database>[^/]+)/run/(?P<run_id>[^/]*)/tasks$", tasks_page),
    (r"^/-/pipeloom/(?P<database>[^/]+)/run/(?P<run_id>[^/.]*)$", run_page),
    (r"^/-/pipeloom/(?P<database>[^/]+)/compare$", compare_page),
]
"""The pages' routes, registered by the plugin's ``register_routes``."""
