"""Pipelines for the day-two tests, in a module of their own so worker processes import them."""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeloom import Context, Pipeline


@dataclass(frozen=True)
class Row:
    """One loaded source row."""

    id: int
    source: str


def target_schema(conn: sqlite3.Connection) -> None:
    """The domain table the loads write to; no key, so a row loaded twice would show."""
    conn.execute("CREATE TABLE IF NOT EXISTS target (id INTEGER, source TEXT)")


def insert_rows(conn: sqlite3.Connection, msgs: list[Row]) -> None:
    """Insert loaded rows."""
    conn.executemany(
        "INSERT INTO target (id, source) VALUES (?, ?)", [(m.id, m.source) for m in msgs]
    )


def source_ids(source: Path, after: int, limit: int) -> list[int]:
    """The next ``limit`` ids of the source table after ``after``."""
    conn = sqlite3.connect(source)
    try:
        rows = conn.execute(
            "SELECT id FROM source WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
        ).fetchall()
    finally:
        conn.close()
    return [int(r[0]) for r in rows]


def make_incremental(db: Path, *, executor: Any = "threads") -> Pipeline:
    """One task per run: load the source rows after the stored cursor, move the cursor."""
    pipe = Pipeline(
        "incremental",
        db=db,
        workers=1,
        executor=executor,
        handlers={Row: insert_rows},
        schema=target_schema,
        params={"source": Path("source.db"), "batch": 50, "fail_after_set": False, "linger": 0.0},
    )
    pipe.task(load_new)
    pipe.map(load_new, ["batch"])
    return pipe


def load_new(ctx: Context, _item: str) -> int:
    """Load what is new since the cursor; the cursor commits with the rows, or neither does."""
    cursor = int(ctx.state.get("cursor", 0))
    ids = source_ids(ctx.params["source"], cursor, ctx.params["batch"])
    for i in ids:
        ctx.emit(Row(i, "src"))
    if ids:
        ctx.state.set("cursor", ids[-1])
    # The task goes on after moving the cursor: a cursor committed on its own would be
    # durable here, before the rows it covers.
    time.sleep(ctx.params["linger"])
    if ctx.params["fail_after_set"]:
        raise RuntimeError("failed after ctx.state.set")
    return len(ids)


def make_params(db: Path, *, executor: Any = "threads") -> Pipeline:
    """Tasks that return the parameters they read, typed."""
    pipe = Pipeline(
        "params",
        db=db,
        workers=2,
        executor=executor,
        params={
            "since": dt.date(2024, 1, 1),
            "at": dt.datetime(2024, 1, 1, 12, 0),
            "limit": 10,
            "ratio": 0.5,
            "dry": False,
            "name": "x",
            "out": Path("out"),
        },
    )
    pipe.task(echo_params)
    pipe.map(echo_params, [1, 2])
    return pipe


def echo_params(ctx: Context, item: int) -> dict[str, Any]:
    """Return each parameter's type name and value as text."""
    return {k: [type(v).__name__, str(v)] for k, v in sorted(ctx.params.items())}


def make_two_setters(db: Path, *, executor: str = "threads") -> Pipeline:
    """Two tasks of one run set the same key: the second one to commit fails."""
    pipe = Pipeline("setters", db=db, workers=1, executor=executor)
    pipe.task(set_shared)
    pipe.map(set_shared, ["a", "b"])
    return pipe


def set_shared(ctx: Context, item: str) -> str:
    """Set the one shared key."""
    ctx.state.set("shared", item)
    return item


def load_until_caught_up(db: str, source: str) -> None:
    """Run the incremental pipeline until its cursor reaches the source's last id.

    The body of the process the crash test kills: a fresh run per batch, as a scheduler would.
    """
    pipe = make_incremental(Path(db))
    conn = sqlite3.connect(source)
    try:
        (last,) = conn.execute("SELECT coalesce(max(id), 0) FROM source").fetchone()
    finally:
        conn.close()
    while True:
        result = pipe.run(
            progress=False, params={"source": Path(source), "batch": 4, "linger": 0.04}
        )
        if not result.ok:
            raise SystemExit(f"run {result.run_id} failed")
        state = sqlite3.connect(db)
        try:
            row = state.execute(
                "SELECT value FROM pipeloom_state WHERE pipeline = 'incremental' AND key = 'cursor'"
            ).fetchone()
        finally:
            state.close()
        if row is not None and int(row[0]) >= last:
            return


@dataclass(frozen=True)
class ForgetSource:
    """Delete every row an earlier run loaded from ``source``: emitted before its new rows."""

    source: str


@dataclass(frozen=True)
class Value:
    """One parsed value of a source file."""

    source: str
    value: int


def values_schema(conn: sqlite3.Connection) -> None:
    """The domain table the ETL loads."""
    conn.execute("CREATE TABLE IF NOT EXISTS etl_values (source TEXT, value INTEGER)")


def forget_sources(conn: sqlite3.Connection, msgs: list[ForgetSource]) -> None:
    """Delete what earlier runs loaded from these sources."""
    conn.executemany("DELETE FROM etl_values WHERE source = ?", [(m.source,) for m in msgs])


def insert_values(conn: sqlite3.Connection, msgs: list[Value]) -> None:
    """Insert parsed values."""
    conn.executemany(
        "INSERT INTO etl_values (source, value) VALUES (?, ?)", [(m.source, m.value) for m in msgs]
    )


def make_etl(db: Path, files: list[str], *, executor: Any = "threads") -> Pipeline:
    """download (copy to a staging folder) -> parse (rows replaced per source) -> summarise."""
    pipe = Pipeline(
        "etl",
        db=db,
        workers=2,
        executor=executor,
        handlers={ForgetSource: forget_sources, Value: insert_values},
        schema=values_schema,
        params={"src": Path("src"), "staged": Path("staged")},
    )
    fetch = pipe.task(download)
    parsed = pipe.map(pipe.task(parse), pipe.map(fetch, files))
    pipe.gather(pipe.task(summarise), parsed)
    return pipe


def download(ctx: Context, name: str) -> str:
    """Copy the source file to the staging folder; return the staged path."""
    staged = ctx.params["staged"]
    staged.mkdir(parents=True, exist_ok=True)
    (staged / name).write_text((ctx.params["src"] / name).read_text())
    return str(staged / name)


def parse(ctx: Context, staged: str) -> int:
    """Replace the source's rows: forget what earlier runs loaded, then add each value."""
    source = Path(staged).name
    values = [int(line) for line in Path(staged).read_text().split()]  # a bad line raises
    ctx.emit(ForgetSource(source))
    for value in values:
        ctx.emit(Value(source, value))
    return len(values)


def summarise(ctx: Context, counts: list[int]) -> int:
    """Count every parsed value."""
    return sum(counts)


def make_cached(
    db: Path, files: list[Path], *, executor: Any = "threads", version: str = "1"
) -> Pipeline:
    """total (cached by the file's size and mtime) -> double (cached by the total it gets)."""
    from pipeloom import fingerprint

    pipe = Pipeline("cached", db=db, workers=2, executor=executor)
    summed = pipe.map(
        pipe.task(total_of, cache=True, cache_key=fingerprint.file, cache_version=version),
        files,
        key=lambda p: p.name,
    )
    pipe.map(pipe.task(double, cache=True), summed)
    return pipe


def total_of(ctx: Context, path: Path) -> int:
    """Sum the numbers of a file."""
    return sum(int(x) for x in path.read_text().split())


def double(ctx: Context, total: int) -> int:
    """Twice the total."""
    return 2 * total
