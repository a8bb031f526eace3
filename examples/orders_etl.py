"""An end-to-end ETL: a folder of daily order files into a clean, queryable ``orders`` table.

Each CSV file is one task. A task validates every row (a bad row is kept in ``rejects``
with its line number and the reason, it does not fail the file; a file without the
expected columns fails as a whole), transforms the good rows (amounts in cents, ISO dates,
tidy names) and sends them to the writer in a custom message. The handler upserts them on
the order id, and a correction in a later file wins over an earlier one whatever order the
files are loaded in, so a file can be loaded twice, or retried after a crash mid-way,
without duplicating or undoing anything.

    pipeloom run examples/orders_etl.py:pipe            # load every file
    pipeloom run examples/orders_etl.py:pipe --resume   # only files not loaded yet
    pipeloom run examples/orders_etl.py:main            # load, then print the summary

It makes its own input on first use: six daily files in ``./orders_in`` (``ORDERS_DIR``
reads another folder with the same columns).
"""

from __future__ import annotations

import csv
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path

from pipeloom import Context, Pipeline, RunResult, console

INPUT = Path(os.environ.get("ORDERS_DIR", "orders_in"))
DB = Path("orders.db")
COLUMNS = ("order_id", "ordered_at", "customer", "country", "sku", "quantity", "unit_price")

Order = tuple[int, str, str, str, str, int, int, str]
"""order_id, ordered_at, customer, country, sku, quantity, amount_cents, file day."""
Reject = tuple[str, int, str, str]
"""file, line, reason, the raw line."""


def make_sample_data(folder: Path, days: int = 6, rows: int = 150) -> None:
    """Write ``days`` daily files with a few bad rows and some corrections of earlier orders."""
    if folder.exists():
        return
    folder.mkdir(parents=True)
    countries = ("nl", "DE", " fr", "US", "jp ")
    for day in range(1, days + 1):
        with (folder / f"orders-2024-03-{day:02d}.csv").open("w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(COLUMNS)
            for i in range(rows):
                order_id = day * 1000 + i
                quantity = str(1 + i % 4)
                if day > 1 and i % 50 == 0:  # a correction: an earlier order, new quantity
                    order_id, quantity = (day - 1) * 1000 + i, str(5 + i % 4)
                customer = f"  customer {i % 40:02d} "
                when = f"2024-03-{day:02d}"
                if i % 37 == 5:
                    quantity = "-2"
                if i % 53 == 7:
                    customer = ""
                if i % 71 == 9:
                    when = f"2024-02-3{day % 2}"
                price = f"{(i % 9 + 1) * 2.5:.2f}"
                out.writerow(
                    [order_id, when, customer, countries[i % 5], f"SKU-{i % 12}", quantity, price]
                )


@dataclass(frozen=True, slots=True)
class MsgOrders:
    """Validated, transformed orders of one file."""

    rows: tuple[Order, ...]


@dataclass(frozen=True, slots=True)
class MsgRejects:
    """Rows of one file that failed validation."""

    rows: tuple[Reject, ...]


def schema(conn: sqlite3.Connection) -> None:
    """Create the domain tables (called once, when the writer starts)."""
    conn.execute(
        """CREATE TABLE IF NOT EXISTS orders (
            order_id INTEGER PRIMARY KEY,
            ordered_at TEXT NOT NULL,
            customer TEXT NOT NULL,
            country TEXT NOT NULL,
            sku TEXT NOT NULL,
            quantity INTEGER NOT NULL CHECK (quantity > 0),
            amount_cents INTEGER NOT NULL,
            file_day TEXT NOT NULL
        )"""
    )
    conn.execute(
        "CREATE TABLE IF NOT EXISTS rejects (file TEXT NOT NULL, line INTEGER NOT NULL, "
        "reason TEXT NOT NULL, raw TEXT NOT NULL, PRIMARY KEY (file, line))"
    )


def upsert_orders(conn: sqlite3.Connection, msgs: list[MsgOrders]) -> None:
    """Insert new orders; a row from a later file replaces one from an earlier file."""
    conn.executemany(
        "INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(order_id) DO UPDATE SET "
        "ordered_at = excluded.ordered_at, customer = excluded.customer, "
        "country = excluded.country, sku = excluded.sku, quantity = excluded.quantity, "
        "amount_cents = excluded.amount_cents, file_day = excluded.file_day "
        "WHERE excluded.file_day >= orders.file_day",
        [row for msg in msgs for row in msg.rows],
    )


def upsert_rejects(conn: sqlite3.Connection, msgs: list[MsgRejects]) -> None:
    """Keep each rejected line once, however often its file is loaded."""
    conn.executemany(
        "INSERT INTO rejects VALUES (?, ?, ?, ?) ON CONFLICT(file, line) DO UPDATE SET "
        "reason = excluded.reason, raw = excluded.raw",
        [row for msg in msgs for row in msg.rows],
    )


pipe = Pipeline(
    "orders_etl",
    db=DB,
    schema=schema,
    handlers={MsgOrders: upsert_orders, MsgRejects: upsert_rejects},
)


def transform(record: dict[str, str], file_day: str) -> Order:
    """Validate one row and turn it into an order.

    Raises:
        ValueError: the row breaks a rule; its text is stored as the reject reason.
    """
    customer = " ".join(record["customer"].split()).title()
    if not customer:
        raise ValueError("customer is empty")
    try:
        ordered = date.fromisoformat(record["ordered_at"].strip())
    except ValueError:
        raise ValueError(f"ordered_at {record['ordered_at']!r} is not a date") from None
    try:
        quantity = int(record["quantity"])
        price = Decimal(record["unit_price"])
    except (ValueError, InvalidOperation):
        raise ValueError("quantity or unit_price is not a number") from None
    if quantity <= 0:
        raise ValueError(f"quantity {quantity} is not positive")
    cents = int((price * quantity * 100).to_integral_value())
    country = record["country"].strip().upper()
    return (
        int(record["order_id"]),
        ordered.isoformat(),
        customer,
        country,
        record["sku"].strip(),
        quantity,
        cents,
        file_day,
    )


@pipe.task(retries=1, retry_on=(OSError,))
def load_file(ctx: Context, path: Path) -> dict[str, int]:
    """Validate and transform one file, then hand its rows to the writer.

    Raises:
        ValueError: the file lacks expected columns (the whole file is rejected; fix it and
            run again with --resume).
    """
    file_day = path.stem.removeprefix("orders-")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
        records = list(reader)
    good: list[Order] = []
    bad: list[Reject] = []
    for line, record in enumerate(records, start=2):
        try:
            good.append(transform(record, file_day))
        except ValueError as exc:
            bad.append((path.name, line, str(exc), ",".join(record.values())))
        if line % 50 == 0:
            ctx.progress(line - 1, len(records), f"{len(good)} ok, {len(bad)} rejected")
    ctx.emit(MsgOrders(tuple(good)))
    if bad:
        ctx.emit(MsgRejects(tuple(bad)))
    ctx.progress(len(records), len(records), f"{len(good)} ok, {len(bad)} rejected")
    return {"rows": len(good), "rejected": len(bad)}


def input_files() -> Iterator[Path]:
    """The day files, made first if missing (when the run starts, not on import)."""
    make_sample_data(INPUT)
    yield from sorted(INPUT.glob("*.csv"))


pipe.map(load_file, input_files())

SUMMARY_SQL = """
    SELECT country, COUNT(*) AS orders, SUM(quantity) AS items,
           printf('%.2f', SUM(amount_cents) / 100.0) AS revenue
    FROM orders GROUP BY country ORDER BY SUM(amount_cents) DESC
"""


def summary(db: Path = DB) -> list[tuple[str, int, int, str]]:
    """Revenue per country, largest first, read with a plain connection."""
    with sqlite3.connect(db) as conn:
        return conn.execute(SUMMARY_SQL).fetchall()


def main(db: Path = DB, resume: bool = False) -> RunResult:
    """Load every file (or only what is missing, with resume), then print the summary."""
    result = pipe.run(db=db, resume=resume)
    for country, orders, items, revenue in summary(db):
        console.print(f"{country}: {orders} orders, {items} items, {revenue} revenue")
    with sqlite3.connect(db) as conn:
        (rejected,) = conn.execute("SELECT COUNT(*) FROM rejects").fetchone()
    console.print(f"{rejected} rows rejected: SELECT * FROM rejects")
    return result


if __name__ == "__main__":
    main().raise_for_status()
