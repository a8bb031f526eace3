"""pipeloom's Datasette plugin: readable cells, one color per status, the task page, quiet errors.

Registered in-process by `pipeloom_observe.app.build_datasette` (it is not an installed
Datasette plugin, so ``datasette`` run by hand on a run database does not load it):

- ``render_cell``: statuses as colored badges, timestamps without their ISO clutter,
  durations in s / m / h, params and errors folded in ``<details>``, run ids linked to the run
  page and task ids to the task page;
- ``extra_css_urls``: ``static/pipeloom.css`` (monospace tracebacks, no wrapping timestamps);
- ``register_routes``: the task page, ``/-/pipeloom/DB/task/RUN_ID/TASK_ID``, and the pages
  of `pipeloom_observe.plugin.pages` (the runs as the home page, failures across runs, one
  run with its stage lanes and live JSON, a stage's tasks, two runs compared);
- ``handle_exception``: a rejected query (bad SQL, a write, the time limit) is one log line
  instead of Datasette's ~300-line Rich traceback on the terminal.

`STATUS_COLORS` (from `pipeloom_observe.colors`) is the one color per status, here, on the
pages and in the dashboards' vega-lite scales.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar, cast

from datasette import hookimpl as _datasette_hookimpl
from datasette.utils import tilde_encode
from datasette.utils.asgi import Base400, NotFound, Response
from datasette.views.base import DatasetteError
from markupsafe import Markup

from pipeloom.history import done_in_run
from pipeloom.messages import parse_utc
from pipeloom_observe.colors import STATUS_COLORS
from pipeloom_observe.dashboards import HISTORY_DASHBOARD, RUN_DASHBOARD
from pipeloom_observe.plugin._web import (
    MAX_ID,
    format_duration,
    format_time,
    id_param,
    status_badge,
)
from pipeloom_observe.plugin.pages import ROUTES, page_url, run_database

__all__ = [
    "DEFAULT_EXCEPTION_HANDLER",
    "HISTORY_DASHBOARD",
    "MAX_ID",
    "PLUGIN_NAME",
    "RUN_DASHBOARD",
    "STATUS_COLORS",
    "format_duration",
    "format_time",
    "id_param",
    "run_url",
    "task_url",
]

log = logging.getLogger("pipeloom.observe")

_Hook = TypeVar("_Hook", bound=Callable[..., Any])


def hookimpl(fn: _Hook) -> _Hook:
    """Datasette's ``hookimpl`` marker, typed (Datasette ships no type hints)."""
    return cast(_Hook, _datasette_hookimpl(fn))


PLUGIN_NAME: Final = __name__
"""The name Datasette lists this plugin under (``/-/plugins``, ``/-/static-plugins/...``)."""

_TIME_COLUMNS: Final = frozenset(
    {"started_at", "finished_at", "heartbeat_at", "created_at", "last_started_at"}
)
_DURATION_COLUMNS: Final = frozenset({"duration_s", "seconds"})
_FOLDED_TEXT: Final = frozenset({"error", "payload", "result"})


def _db_path(datasette: Any, database: str) -> str:
    return str(datasette.urls.path("/-/pipeloom/" + tilde_encode(database)))


def run_url(datasette: Any, run_id: object, database: str | None = None) -> str:
    """The page of one run (the run dashboard's charts when the database is not known)."""
    if database is not None and database == run_database(datasette):
        return page_url(datasette, database, f"run/{int(str(run_id))}")
    return str(datasette.urls.path(f"/-/dashboards/{RUN_DASHBOARD}?run_id={int(str(run_id))}"))


def task_url(datasette: Any, database: str, run_id: object, task_id: object) -> str:
    """The task page of one task of one run."""
    return f"{_db_path(datasette, database)}/task/{int(str(run_id))}/{int(str(task_id))}"


def _folded(text: str, *, summary: str | None = None, css: str = "pl-mono") -> Markup:
    lines = [line for line in text.splitlines() if line.strip()]
    first = summary if summary is not None else (lines[-1] if lines else "")
    if len(lines) <= 1 and len(text) <= 80 and summary is None:
        return Markup('<span class="{}">{}</span>').format(css, text)
    short = first if len(first) <= 100 else first[:99] + "…"
    return Markup(
        '<details class="pl-fold"><summary>{}</summary><pre class="{}">{}</pre></details>'
    ).format(short, css, text)


def _params(value: str) -> Markup:
    try:
        loaded = json.loads(value)
    except ValueError:
        return _folded(value)
    if not loaded:
        return Markup('<span class="pl-muted">none</span>')
    pretty = json.dumps(loaded, indent=2, sort_keys=True, default=str)
    count = len(loaded) if isinstance(loaded, dict | list) else 1
    return _folded(pretty, summary=f"{count} param{'s' if count != 1 else ''}")


def _payload_task(value: str) -> int | None:
    try:
        loaded = json.loads(value)
    except ValueError:
        return None
    task_id = loaded.get("task_id") if isinstance(loaded, dict) else None
    return task_id if isinstance(task_id, int) else None


def _keys(row: Any) -> set[str]:
    try:
        return set(row.keys())
    except AttributeError:
        return set()


def _plain(value: Any) -> Any:
    """The stored value of a cell (an expanded foreign key arrives as value and label)."""
    return value["value"] if isinstance(value, dict) and "value" in value else value


def _render(row: Any, value: Any, column: str, table: str | None, database: str, ds: Any) -> Any:
    keys = _keys(row)
    raw = _plain(value)
    if raw is None:
        return None
    if column in {"status", "run_status"} and isinstance(raw, str):
        stale = "stale" in keys and bool(row["stale"]) and column == "status" and raw != "stale"
        return status_badge(raw, stale=stale)
    if column == "stopped" and isinstance(raw, str):
        return Markup('<span class="pl-nowrap">{}</span>').format(raw)
    if column == "stale":
        return Markup(status_badge("stale") if raw else '<span class="pl-muted">-</span>')
    if column in _TIME_COLUMNS and isinstance(raw, str) and len(raw) >= 19:
        return Markup('<time class="pl-time" datetime="{0}" title="{0}">{1}</time>').format(
            raw, format_time(raw)
        )
    if column in _DURATION_COLUMNS and isinstance(raw, int | float):
        return Markup('<span class="pl-num" title="{} s">{}</span>').format(
            raw, format_duration(float(raw))
        )
    if column == "progress" and isinstance(raw, int | float) and {"total", "tasks_total"} & keys:
        percent = max(0.0, min(1.0, float(raw))) * 100
        return Markup(
            '<span class="pl-nowrap"><span class="pl-progress"><span style="width:{0:.0f}%">'
            "</span></span> {0:.0f}%</span>"
        ).format(percent)
    if column == "params" and isinstance(raw, str):
        return _params(raw)
    if column == "run_id" and isinstance(raw, int):
        label = value.get("label") if isinstance(value, dict) else None
        link = Markup('<a href="{}" title="the run\'s dashboard">#{}</a>').format(
            run_url(ds, raw, database), raw
        )
        if label is not None and str(label) != str(raw):
            return link + Markup(" {}").format(label)
        return link
    if column == "task_id" and isinstance(raw, int) and "run_id" in keys:
        run_id = _plain(row["run_id"])
        if isinstance(run_id, int):
            return Markup('<a href="{}" title="the task page">{}</a>').format(
                task_url(ds, database, run_id, raw), raw
            )
    if table == "pipeline_runs" and column == "name" and "id" in keys:
        return Markup('<a href="{}" title="the run\'s dashboard">{}</a>').format(
            run_url(ds, row["id"], database), raw
        )
    if column == "payload" and isinstance(raw, str) and "run_id" in keys:
        folded = _folded(raw)
        task_id = _payload_task(raw)
        run_id = _plain(row["run_id"])
        if task_id is not None and isinstance(run_id, int):
            link = Markup('<a href="{}">task {}</a> ').format(
                task_url(ds, database, run_id, task_id), task_id
            )
            return link + folded
        return folded
    if column == "owner" and isinstance(raw, str) and " " in raw:
        # "host pidns=... boot=...": the host says enough in a list; the rest on a click.
        return _folded(raw, summary=raw.split(" ", 1)[0])
    if column in _FOLDED_TEXT and isinstance(raw, str):
        return _folded(raw)
    return None


@hookimpl
def render_cell(
    row: Any, value: Any, column: str, table: str | None, database: str, datasette: Any
) -> Any:
    """Render pipeloom's columns for people; None leaves a cell to Datasette."""
    try:
        return _render(row, value, column, table, database, datasette)
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        # A cell is never worth a failed page: show it as Datasette would, and say why once.
        log.debug("pipeloom observe: plain cell for %s=%r (%s)", column, value, exc)
        return None


@hookimpl
def extra_css_urls(datasette: Any) -> list[str]:
    """Add the stylesheet (badges, monospace tracebacks) to every page."""
    return [datasette.urls.static_plugins(PLUGIN_NAME, "pipeloom.css")]


async def _rows(db: Any, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    result = await db.execute(sql, dict(params))
    return [dict(row) for row in result.rows]


async def _columns(db: Any, table: str) -> set[str]:
    if not await db.table_exists(table):
        return set()
    return set(await db.table_columns(table))


def _duration(started: str | None, finished: str | None) -> str:
    began, ended = parse_utc(started), parse_utc(finished)
    if began is None or ended is None:
        return ""
    return format_duration((ended - began).total_seconds())


_DEAD_LETTERS_SHOWN = 200
"""Dead letters listed on a task page; the rest are counted and one SQL query away."""


async def task_page(datasette: Any, request: Any) -> Response:
    """One task of one run: its error and traceback, attempts, logs and dead letters."""
    from datasette.utils import tilde_decode

    database = tilde_decode(request.url_vars["database"])
    run_id = id_param(request, "run_id", low=1)
    task_id = id_param(request, "task_id")
    try:
        db = datasette.get_database(database)
    except KeyError:
        raise NotFound(f"no database {database}") from None
    params = {"run_id": run_id, "task_id": task_id}
    if not {"run_id", "task_id"} <= await _columns(db, "task_runs"):
        raise NotFound(
            f"{database} holds no pipeloom run history of the current layout; "
            f"run `pipeloom db upgrade` on it for task pages"
        )
    tasks = await _rows(
        db,
        "SELECT t.*, r.name AS run_name, r.status AS run_status, r.params AS run_params, "
        "r.request AS run_request "
        "FROM task_runs t "
        "JOIN pipeline_runs r ON r.id = t.run_id WHERE t.run_id = :run_id AND t.task_id = :task_id",
        params,
    )
    if not tasks:
        raise NotFound(f"run {run_id} has no task {task_id}")
    task = tasks[0]
    # A skipped task's result names the run that did its work ({"done_in_run": 7}), as
    # resume and retention read it; its message text is for people.
    task["origin_run"] = done_in_run(task.get("result")) if task["status"] == "skipped" else None
    # A cached task's result is a done task's of an earlier run (schema 7 records which).
    task.setdefault("cached_from_run", None)
    task.setdefault("cached_from_task", None)
    attempts = await _rows(
        db,
        "SELECT attempt, status, started_at, finished_at, error, discarded FROM task_attempts "
        "WHERE run_id = :run_id AND task_id = :task_id ORDER BY attempt, id",
        params,
    )
    if not any(a["attempt"] == task["attempt"] for a in attempts):
        # task_attempts keeps the attempts that were retried; the last one is the task's row.
        attempts.append(
            {
                "attempt": task["attempt"],
                "status": task["status"],
                "started_at": task["started_at"],
                "finished_at": task["finished_at"],
                "error": task["error"],
                "discarded": 0,
            }
        )
    log_columns = await _columns(db, "task_logs")
    dropped = "dropped" if "dropped" in log_columns else "0"
    logs = (
        await _rows(
            db,
            f"SELECT created_at, attempt, level, logger, message, {dropped} AS dropped "
            "FROM task_logs WHERE run_id = :run_id AND task_id = :task_id ORDER BY id LIMIT 2000",
            params,
        )
        if log_columns
        else []
    )
    # Since schema 6 a dead letter names its task and attempt; older rows only in their
    # payload. Found through idx_dead_letters_run_task, never by scanning the run's letters.
    traced = "task_id" in await _columns(db, "dead_letters")
    where = (
        "WHERE run_id = :run_id AND task_id = :task_id"
        if traced
        else "WHERE run_id = :run_id AND json_valid(payload) "
        "AND json_extract(payload, '$.task_id') = :task_id"
    )
    attempt = "attempt" if traced else "NULL AS attempt"
    letters = await _rows(
        db,
        f"SELECT id, {attempt}, created_at, msg_type, payload, error FROM dead_letters {where} "
        f"ORDER BY id LIMIT {_DEAD_LETTERS_SHOWN}",
        params,
    )
    letters_total = len(letters)
    if letters_total == _DEAD_LETTERS_SHOWN:
        counted = await _rows(db, f"SELECT count(*) AS n FROM dead_letters {where}", params)
        letters_total = int(counted[0]["n"])
    other_runs = []
    if task.get("task_key"):
        other_runs = await _rows(
            db,
            "SELECT run_id, task_id, status, started_at, finished_at FROM task_runs "
            "WHERE task_key = :key ORDER BY run_id DESC LIMIT 20",
            {"key": task["task_key"]},
        )
    for row in (task, *attempts, *other_runs):
        row["duration"] = _duration(row.get("started_at"), row.get("finished_at"))
    context = {
        "database": database,
        "task": task,
        "attempts": attempts,
        "logs": logs,
        "has_logs": bool(log_columns),
        "dead_letters": letters,
        "dead_letters_total": letters_total,
        "other_runs": other_runs,
        "params": _params(task["run_params"]) if task.get("run_params") else None,
        "request": _params(task["run_request"]) if task.get("run_request") else None,
        "badge": status_badge,
        "fmt_time": format_time,
        "run_url": lambda rid: run_url(datasette, rid, database),
        "task_url": lambda rid, tid: task_url(datasette, database, rid, tid),
        "db_url": datasette.urls.database(database),
    }
    html = await datasette.render_template("pipeloom_task.html", context, request=request)
    return Response.html(html)


@hookimpl
def register_routes() -> list[tuple[str, Callable[..., Any]]]:
    """The task page and `pipeloom_observe.plugin.pages` (ids are checked by `id_param`)."""
    return [
        (
            # Any segment: `id_param` answers "nan" or "" with a line naming it, not a bare 404.
            r"^/-/pipeloom/(?P<database>[^/]+)/task/(?P<run_id>[^/]*)/(?P<task_id>[^/]*)$",
            task_page,
        ),
        *ROUTES,
    ]


DEFAULT_EXCEPTION_HANDLER: Final = "datasette.handle_exception"
"""Datasette's own handle_exception plugin: every handler runs, and this one prints a Rich
traceback with locals (~300 lines) for any error, a mistyped query included. `pipeloom_observe.
app.register_plugin` unregisters it; `handle_exception` here calls it for real bugs."""


def _rejected(exception: BaseException) -> tuple[int, str, str | None, bool] | None:
    """Status, message, title and is-HTML of an error that is the visitor's, not a bug."""
    if isinstance(exception, Base400):
        return exception.status, str(exception.args[0]), None, False
    if isinstance(exception, DatasetteError):
        return exception.status, str(exception.message), exception.title, exception.message_is_html
    return None


def _sqlite_logged(exception: BaseException) -> bool:
    """True when Datasette already wrote its one ``ERROR: conn=...`` line for this error.

    It does for every SQLite error of a query except the time limit's ``interrupted``.
    """
    seen: BaseException | None = exception
    while seen is not None:
        if isinstance(seen, sqlite3.Error) and seen.args != ("interrupted",):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@hookimpl
def handle_exception(datasette: Any, request: Any, exception: BaseException) -> Any:
    """Answer a rejected query with Datasette's error page and one line, not a traceback.

    A bad query, a write, an unknown column or page is the visitor's mistake: one log line
    (none when Datasette already printed its own line for a SQLite error). Anything else is
    a bug, and goes to Datasette's handler with its full traceback.
    """
    rejected = _rejected(exception)
    if rejected is None:
        from datasette import handle_exception as default

        return default.handle_exception(datasette, request, exception)
    status, message, title, is_html = rejected
    if not _sqlite_logged(exception):
        log.warning(
            "pipeloom observe: %s %s answered %s: %s",
            request.method,
            request.path if len(request.path) <= 200 else request.path[:200] + "...",
            status,
            " ".join(message.split()),
        )

    async def inner() -> Response:
        info = {
            "ok": False,
            "error": Markup(message) if is_html else message,
            "status": status,
            "title": title,
        }
        if request.path.split("?")[0].endswith(".json"):
            return Response.json({**info, "error": message}, status=status)
        template = datasette.jinja_env.select_template([f"{status}.html", "error.html"])
        body = await template.render_async(
            dict(
                info,
                urls=datasette.urls,
                app_css_hash=datasette.app_css_hash(),
                menu_links=lambda: [],
            )
        )
        return Response.html(body, status=status)

    return inner
