"""Load a folder of CSV files into SQLite with an upsert, one task per file.

Run it with ``pipeloom run examples/csv_loader.py:pipe`` (or ``python examples/csv_loader.py``).
It makes its own input on first use: five CSV files of customers in ``./csv_loader_data``
(set ``CSV_LOADER_DIR`` to read another folder with the columns id,name,email,country).
Rows land in the ``customers`` table of ``csv_loader.db``; running it again updates them in
place, because the handler upserts on the customer id.
"""

from __future__ import annotations

import csv
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeloom import Context, Pipeline

DATA = Path(os.environ.get("CSV_LOADER_DIR", "csv_loader_data"))
BATCH = 100
"""Rows per message: the writer applies each message's rows with one executemany."""


def make_sample_data(folder: Path, files: int = 5, rows: int = 200) -> None:
    """Write ``files`` CSV files of ``rows`` customers each, unless the folder exists."""
    if folder.exists():
        return
    folder.mkdir(parents=True)
    countries = ("NL", "DE", "FR", "US", "JP")
    for f in range(files):
        with (folder / f"customers-{f + 1:02d}.csv").open("w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["id", "name", "email", "country"])
            for i in range(rows):
                cid = f * rows + i + 1
                out.writerow([cid, f"Customer {cid}", f"c{cid}@example.com", countries[cid % 5]])


@dataclass(frozen=True, slots=True)
class MsgUpsertCustomers:
    """A batch of customer rows to store: (id, name, email, country, source file)."""

    rows: tuple[tuple[int, str, str, str, str], ...]


def schema(conn: sqlite3.Connection) -> None:
    """Create the table the rows go to (called once, when the writer starts)."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
        "email TEXT NOT NULL, country TEXT NOT NULL, source TEXT NOT NULL)"
    )


def upsert_customers(conn: sqlite3.Connection, msgs: list[MsgUpsertCustomers]) -> None:
    """Apply a batch of messages in the writer thread (the only place that writes)."""
    conn.executemany(
        "INSERT INTO customers (id, name, email, country, source) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT(id) DO UPDATE SET name = excluded.name, email = excluded.email, "
        "country = excluded.country, source = excluded.source",
        [row for msg in msgs for row in msg.rows],
    )


pipe = Pipeline(
    "csv_loader", db="csv_loader.db", schema=schema, handlers={MsgUpsertCustomers: upsert_customers}
)


@pipe.task(retries=1, retry_on=(OSError,))
def load(ctx: Context, path: Path) -> dict[str, int]:
    """Read one file and send its rows to the writer in batches."""
    with path.open(newline="") as fh:
        records = list(csv.DictReader(fh))
    for start in range(0, len(records), BATCH):
        chunk = records[start : start + BATCH]
        ctx.emit(
            MsgUpsertCustomers(
                tuple((int(r["id"]), r["name"], r["email"], r["country"], path.name) for r in chunk)
            )
        )
        ctx.progress(start + len(chunk), len(records), f"{start + len(chunk)} rows")
    return {"rows": len(records)}


def input_files() -> Iterator[Path]:
    """The files to load, made first if missing.

    A generator runs when the pipeline starts, not when the file is imported, so process
    workers (``--executor processes``), which import this file, do not make data too.
    """
    make_sample_data(DATA)
    yield from sorted(DATA.glob("*.csv"))


pipe.map(load, input_files())

if __name__ == "__main__":
    pipe.run().raise_for_status()
