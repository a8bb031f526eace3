"""HTTP JSON to SQLite: fetch two JSON endpoints, keep the columns you want, upsert them.

Run it with ``pipeloom run examples/etl_http_json_sqlite.py:pipe``. Offline by default: it
starts a small HTTP server of its own on 127.0.0.1 that serves ``/posts`` and ``/todos``.
Set ``ETL_BASE_URL`` to read the same paths from a real service instead (any base URL whose
``/posts`` and ``/todos`` return a JSON array of objects with the columns below).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from pipeloom import Context, Pipeline


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One source: where to read, which table gets it, which columns to keep."""

    path: str
    table: str
    columns: tuple[str, ...]


ENDPOINTS = (
    Endpoint("/posts", "posts", ("id", "userId", "title", "body")),
    Endpoint("/todos", "todos", ("id", "userId", "title", "completed")),
)


def sample_documents() -> dict[str, bytes]:
    """The JSON the local server answers with: 100 posts and 200 todos."""
    posts = [
        {"id": i, "userId": 1 + i % 10, "title": f"post {i}", "body": f"text of post {i}"}
        for i in range(1, 101)
    ]
    todos = [
        {"id": i, "userId": 1 + i % 10, "title": f"todo {i}", "completed": i % 3 == 0}
        for i in range(1, 201)
    ]
    return {"/posts": json.dumps(posts).encode(), "/todos": json.dumps(todos).encode()}


class _Handler(BaseHTTPRequestHandler):
    documents: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        body = self.documents.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the server quiet; the pipeline logs what it fetches."""


_server_lock = threading.Lock()


@cache
def _local_server() -> str:
    _Handler.documents = sample_documents()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, name="example-http", daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def base_url() -> str:
    """``ETL_BASE_URL``, or the address of a local server started on first use."""
    given = os.environ.get("ETL_BASE_URL")
    if given:
        return given.rstrip("/")
    with _server_lock:  # workers ask at once; start one server, not one each
        return _local_server()


def http_get(url: str) -> Any:
    """Open ``url`` for reading; a 4xx answer fails at once, other errors may be retried.

    Raises:
        RuntimeError: the server answered 4xx (a retry would get the same).
        ConnectionError: it answered 5xx.
    """
    try:
        return urllib.request.urlopen(url, timeout=30)
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the connection open otherwise
        kind = RuntimeError if 400 <= exc.code < 500 else ConnectionError
        raise kind(f"GET {url}: HTTP {exc.code} {exc.reason}") from None


@dataclass(frozen=True, slots=True)
class MsgUpsertRows:
    """Rows for one table, columns in the endpoint's order; ``id`` first."""

    table: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]


def schema(conn: sqlite3.Connection) -> None:
    """Create one table per endpoint; ``id`` is the key every upsert uses."""
    for ep in ENDPOINTS:
        cols = ", ".join(f"{c} {'INTEGER PRIMARY KEY' if c == 'id' else ''}" for c in ep.columns)
        conn.execute(f"CREATE TABLE IF NOT EXISTS {ep.table} ({cols})")


def upsert_rows(conn: sqlite3.Connection, msgs: list[MsgUpsertRows]) -> None:
    """Upsert each message's rows into its table (table names come from ENDPOINTS only)."""
    for msg in msgs:
        updates = ", ".join(f"{c} = excluded.{c}" for c in msg.columns if c != "id")
        conn.executemany(
            f"INSERT INTO {msg.table} ({', '.join(msg.columns)}) "
            f"VALUES ({', '.join('?' for _ in msg.columns)}) "
            f"ON CONFLICT(id) DO UPDATE SET {updates}",
            msg.rows,
        )


pipe = Pipeline("etl_http_json", db="etl.db", schema=schema, handlers={MsgUpsertRows: upsert_rows})


@pipe.task(retries=2, backoff=0.2, retry_on=(OSError,))
def fetch(ctx: Context, ep: Endpoint) -> dict[str, int]:
    """Extract, transform (keep the endpoint's columns), load through the writer."""
    url = base_url() + ep.path
    ctx.log.info("GET %s", url)
    with http_get(url) as response:
        data = json.load(response)
    ctx.progress(1, 3, "extracted")
    if isinstance(data, dict):
        data = [data]
    # Missing columns become NULL; booleans are stored as 0/1 by sqlite3.
    rows = tuple(tuple(item.get(c) for c in ep.columns) for item in data)
    ctx.progress(2, 3, "transformed")
    ctx.emit(MsgUpsertRows(ep.table, ep.columns, rows))
    ctx.progress(3, 3, "loaded")
    return {"rows": len(rows)}


pipe.map(fetch, ENDPOINTS, key=lambda ep: ep.table)

if __name__ == "__main__":
    pipe.run().raise_for_status()
