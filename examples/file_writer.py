"""Write files of a known size in chunks, with a live bar per file and a manifest table.

Run it with ``pipeloom run examples/file_writer.py:pipe``. It writes three files into
``./file_writer_out`` (256 KiB, 512 KiB and 1 MiB by default; pipeloom 0.0.7's example
wrote 1-3 GiB). ``FILE_WRITER_SIZES`` sets other sizes in bytes, comma-separated, and
``FILE_WRITER_DIR`` another folder. Each file's name, size and SHA-256 go to the ``files``
table of ``file_writer.db``.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from pipeloom import Context, Pipeline

OUT = Path(os.environ.get("FILE_WRITER_DIR", "file_writer_out"))
SIZES = tuple(
    int(s) for s in os.environ.get("FILE_WRITER_SIZES", "262144,524288,1048576").split(",")
)
CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class MsgFileWritten:
    """One finished file for the manifest."""

    name: str
    size: int
    sha256: str


def schema(conn: sqlite3.Connection) -> None:
    """Create the manifest table."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS files (name TEXT PRIMARY KEY, size INTEGER NOT NULL, "
        "sha256 TEXT NOT NULL)"
    )


def record_files(conn: sqlite3.Connection, msgs: list[MsgFileWritten]) -> None:
    """Store (or refresh) each file's manifest row."""
    conn.executemany(
        "INSERT INTO files VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
        "size = excluded.size, sha256 = excluded.sha256",
        [(m.name, m.size, m.sha256) for m in msgs],
    )


pipe = Pipeline(
    "file_writer", db="file_writer.db", schema=schema, handlers={MsgFileWritten: record_files}
)


@pipe.task
def write_file(ctx: Context, item: tuple[int, int]) -> dict[str, int | str]:
    """Write file number ``n`` of ``size`` bytes under a temporary name, then move it."""
    n, size = item
    OUT.mkdir(parents=True, exist_ok=True)
    target = OUT / f"file-{n:02d}-{size}.bin"
    partial = target.with_suffix(".part")
    digest = hashlib.sha256()
    pattern = bytes(range(256)) * (CHUNK // 256)
    written = 0
    with partial.open("wb") as fh:
        while written < size:
            chunk = pattern[: min(CHUNK, size - written)]
            fh.write(chunk)
            digest.update(chunk)
            written += len(chunk)
            ctx.progress(written, size, f"{written // 1024} KiB")
    partial.replace(target)  # a reader never sees a half-written file under the real name
    ctx.emit(MsgFileWritten(target.name, written, digest.hexdigest()))
    return {"file": target.name, "bytes": written}


pipe.map(write_file, list(enumerate(SIZES, start=1)))

if __name__ == "__main__":
    pipe.run().raise_for_status()
