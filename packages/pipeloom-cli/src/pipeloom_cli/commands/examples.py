"""``pipeloom examples etl|csv|file-writer|download``: 0.0.7's bundled examples, offline.

Each is a small declarative pipeline that makes its own input, so it runs anywhere:
``csv`` generates CSV files, ``etl`` and ``download`` start an HTTP server of their own on
127.0.0.1 (or read ``--url``), ``file-writer`` writes small files (0.0.7 wrote 1-3 GiB).
Their fuller, commented versions are the scripts in the repository's ``examples/`` folder.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipeloom_cli._dbfile import observe_hint, prepare_for_write
from pipeloom_cli._errors import UsageError, exit_code_for, user_errors
from pipeloom_cli._options import LogFile, Verbose, Workers, number, start_logging

if TYPE_CHECKING:
    import sqlite3

    from pipeloom import Context, Pipeline

__all__ = ["app"]

app = typer.Typer(
    help="Run pipeloom 0.0.7's bundled examples as offline pipelines.", no_args_is_help=True
)

Dir = Annotated[
    Path,
    typer.Option("--dir", help="Folder for the example's input and output files."),
]
Url = Annotated[
    str | None,
    typer.Option("--url", help="Read from this base URL instead of a local server."),
]


DbOpt = typer.Option("--db", help="SQLite file the run and its rows are stored in.")


@contextmanager
def _serve(documents: dict[str, bytes]) -> Iterator[str]:
    """Serve ``documents`` (path -> body) on 127.0.0.1 for the duration of the block."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = documents.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the tasks log what they fetch."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="example-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def _get(url: str) -> Iterator[Any]:
    """Open ``url``; a 4xx answer is final, anything else network-ish is worth a retry.

    Raises:
        RuntimeError: the server answered 4xx (retrying will not help).
        ConnectionError: it answered 5xx.
    """
    import urllib.error
    import urllib.request

    try:
        response = urllib.request.urlopen(url, timeout=30)
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the connection open otherwise
        kind = RuntimeError if 400 <= exc.code < 500 else ConnectionError
        raise kind(f"GET {url}: HTTP {exc.code} {exc.reason}") from None
    with response:
        yield response


def _run(pipe: Pipeline, db: Path, workers: int | None) -> None:
    prepare_for_write(db)
    result = pipe.run(db=db, workers=workers, summary_hint=observe_hint(db))
    raise typer.Exit(exit_code_for(result))


@dataclass(frozen=True, slots=True)
class MsgRows:
    """Rows for one table of an example (table and SQL come from this module only)."""

    sql: str
    rows: tuple[tuple[Any, ...], ...]


def _apply_rows(conn: sqlite3.Connection, msgs: list[MsgRows]) -> None:
    for msg in msgs:
        conn.executemany(msg.sql, msg.rows)


def _pipeline(name: str, db: Path, ddl: tuple[str, ...]) -> Pipeline:
    from pipeloom import Pipeline

    def schema(conn: sqlite3.Connection) -> None:
        for statement in ddl:
            conn.execute(statement)

    return Pipeline(name, db=db, schema=schema, handlers={MsgRows: _apply_rows})


_UPSERT_CUSTOMER = (
    "INSERT INTO customers VALUES (?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
    "name = excluded.name, email = excluded.email, source = excluded.source"
)


@app.command("csv")
def csv_example(
    db: Annotated[Path, DbOpt] = Path("csv_example.db"),
    folder: Dir = Path("csv_example_data"),
    files: Annotated[int, number("--files", low=1, high=10_000, help="CSV files to generate.")] = 5,
    rows: Annotated[
        int, number("--rows", low=1, high=10_000_000, help="Rows per generated file.")
    ] = 200,
    workers: Workers = None,
    verbose: Verbose = 0,
    log_file: LogFile = None,
) -> None:
    """Load a folder of CSV files into SQLite with an upsert (files generated if missing)."""
    import csv

    with user_errors(verbose):
        start_logging(verbose, log_file)
        if not folder.exists():
            folder.mkdir(parents=True)
            for f in range(files):
                with (folder / f"customers-{f + 1:02d}.csv").open("w", newline="") as fh:
                    out = csv.writer(fh)
                    out.writerow(["id", "name", "email"])
                    for i in range(f * rows + 1, (f + 1) * rows + 1):
                        out.writerow([i, f"Customer {i}", f"c{i}@example.com"])
        paths = sorted(folder.glob("*.csv"))
        if not paths:
            raise UsageError(f"--dir {folder}: holds no .csv files; remove it to generate some")
        pipe = _pipeline(
            "examples.csv",
            db,
            (
                "CREATE TABLE IF NOT EXISTS customers (id INTEGER PRIMARY KEY, name TEXT, "
                "email TEXT, source TEXT)",
            ),
        )

        @pipe.task
        def load(ctx: Context, path: Path) -> dict[str, int]:
            with path.open(newline="") as fh:
                records = [
                    (int(r["id"]), r["name"], r["email"], path.name) for r in csv.DictReader(fh)
                ]
            ctx.emit(MsgRows(_UPSERT_CUSTOMER, tuple(records)))
            ctx.progress(len(records), len(records), f"{len(records)} rows")
            return {"rows": len(records)}

        pipe.map(load, paths)
        _run(pipe, db, workers)


def _sample_json() -> dict[str, bytes]:
    import json

    posts = [{"id": i, "userId": 1 + i % 10, "title": f"post {i}"} for i in range(1, 101)]
    todos = [
        {"id": i, "userId": 1 + i % 10, "title": f"todo {i}", "completed": i % 3 == 0}
        for i in range(1, 201)
    ]
    return {"/posts": json.dumps(posts).encode(), "/todos": json.dumps(todos).encode()}


_ETL_TABLES = {"posts": ("id", "userId", "title"), "todos": ("id", "userId", "title", "completed")}


@app.command("etl")
def etl_example(
    db: Annotated[Path, DbOpt] = Path("etl_example.db"),
    url: Url = None,
    workers: Workers = None,
    verbose: Verbose = 0,
    log_file: LogFile = None,
) -> None:
    """HTTP JSON to SQLite: /posts and /todos into tables of their own, upserted on id."""
    import json
    from contextlib import nullcontext

    with user_errors(verbose):
        start_logging(verbose, log_file)
        ddl = tuple(
            f"CREATE TABLE IF NOT EXISTS {table} (id INTEGER PRIMARY KEY, "
            + ", ".join(columns[1:])
            + ")"
            for table, columns in _ETL_TABLES.items()
        )
        pipe = _pipeline("examples.etl", db, ddl)
        source = nullcontext(url.rstrip("/")) if url else _serve(_sample_json())
        with source as base:

            @pipe.task(retries=2, backoff=0.2, retry_on=(OSError,))
            def fetch(ctx: Context, table: str) -> dict[str, int]:
                columns = _ETL_TABLES[table]
                ctx.log.info("GET %s/%s", base, table)
                with _get(f"{base}/{table}") as response:
                    data = json.load(response)
                rows = tuple(tuple(item.get(c) for c in columns) for item in data)
                updates = ", ".join(f"{c} = excluded.{c}" for c in columns[1:])
                sql = (
                    f"INSERT INTO {table} ({', '.join(columns)}) "
                    f"VALUES ({', '.join('?' for _ in columns)}) "
                    f"ON CONFLICT(id) DO UPDATE SET {updates}"
                )
                ctx.emit(MsgRows(sql, rows))
                return {"rows": len(rows)}

            pipe.map(fetch, list(_ETL_TABLES))
            _run(pipe, db, workers)


@app.command("file-writer")
def file_writer_example(
    db: Annotated[Path, DbOpt] = Path("file_writer_example.db"),
    folder: Dir = Path("file_writer_example_out"),
    sizes: Annotated[
        str, typer.Option("--sizes", help="File sizes in bytes, comma-separated.")
    ] = "262144,524288,1048576",
    workers: Workers = None,
    verbose: Verbose = 0,
    log_file: LogFile = None,
) -> None:
    """Write files of known sizes in chunks and record each one's size and SHA-256."""
    import hashlib

    with user_errors(verbose):
        start_logging(verbose, log_file)
        try:
            wanted = [int(s) for s in sizes.split(",")]
        except ValueError:
            raise UsageError(f"--sizes {sizes!r}: use byte counts separated by commas") from None
        pipe = _pipeline(
            "examples.file_writer",
            db,
            (
                "CREATE TABLE IF NOT EXISTS files (name TEXT PRIMARY KEY, size INTEGER, "
                "sha256 TEXT)",
            ),
        )

        @pipe.task
        def write(ctx: Context, item: tuple[int, int]) -> dict[str, int]:
            n, size = item
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"file-{n:02d}-{size}.bin"
            digest, written, chunk = hashlib.sha256(), 0, bytes(range(256)) * 256
            with target.with_suffix(".part").open("wb") as fh:
                while written < size:
                    part = chunk[: size - written]
                    fh.write(part)
                    digest.update(part)
                    written += len(part)
                    ctx.progress(written, size)
            target.with_suffix(".part").replace(target)
            ctx.emit(
                MsgRows(
                    "INSERT OR REPLACE INTO files VALUES (?, ?, ?)",
                    ((target.name, written, digest.hexdigest()),),
                )
            )
            return {"bytes": written}

        pipe.map(write, list(enumerate(wanted, start=1)))
        _run(pipe, db, workers)


def _sample_files() -> dict[str, bytes]:
    return {f"/sample-{i}.bin": bytes([i]) * ((32 << 10) << i) for i in range(1, 5)}


@app.command("download")
def download_example(
    db: Annotated[Path, DbOpt] = Path("download_example.db"),
    folder: Dir = Path("download_example_out"),
    url: Annotated[
        list[str] | None,
        typer.Option("--url", help="A URL to download (repeatable) instead of local samples."),
    ] = None,
    workers: Workers = None,
    verbose: Verbose = 0,
    log_file: LogFile = None,
) -> None:
    """Download files, stream them to disk, and record a SHA-256 manifest."""
    import hashlib
    import urllib.parse
    from contextlib import nullcontext

    with user_errors(verbose):
        start_logging(verbose, log_file)
        pipe = _pipeline(
            "examples.download",
            db,
            (
                "CREATE TABLE IF NOT EXISTS downloads (file TEXT PRIMARY KEY, url TEXT, "
                "size INTEGER, sha256 TEXT)",
            ),
        )
        samples = _sample_files()
        source = nullcontext("") if url else _serve(samples)
        with source as base:
            urls = list(url) if url else [base + path for path in samples]

            @pipe.task(retries=2, backoff=0.2, retry_on=(OSError,))
            def download(ctx: Context, address: str) -> dict[str, int]:
                name = Path(urllib.parse.urlparse(address).path).name or f"file-{ctx.task_id}"
                folder.mkdir(parents=True, exist_ok=True)
                target = folder / name
                partial = target.with_name(name + ".part")
                digest, size = hashlib.sha256(), 0
                with _get(address) as resp, partial.open("wb") as fh:
                    total = int(resp.headers.get("Content-Length") or 0)
                    while chunk := resp.read(32 << 10):
                        fh.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                        ctx.progress(size, total)
                partial.replace(target)
                ctx.emit(
                    MsgRows(
                        "INSERT OR REPLACE INTO downloads VALUES (?, ?, ?, ?)",
                        ((name, address, size, digest.hexdigest()),),
                    )
                )
                return {"bytes": size}

            pipe.map(download, urls)
            _run(pipe, db, workers)
