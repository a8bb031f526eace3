"""Download files over HTTP, streaming each to disk, and record a SHA-256 manifest.

Run it with ``pipeloom run examples/http_downloader.py:pipe``. Offline by default: it starts
a small HTTP server on 127.0.0.1 that serves four generated files (64-512 KiB). Set
``DOWNLOAD_URLS`` to a space-separated list of URLs to download those instead. Files land in
``./downloads`` (``DOWNLOAD_DIR``); each one's URL, size and SHA-256 go to the ``downloads``
table of ``downloads.db``.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pipeloom import Context, Pipeline

OUT = Path(os.environ.get("DOWNLOAD_DIR", "downloads"))
CHUNK = 32 * 1024
SAMPLE_SIZES: dict[str, int] = {f"/sample-{i}.bin": (64 << 10) << (i - 1) for i in range(1, 5)}


def sample_bytes(path: str) -> bytes:
    """The content the local server sends for ``path`` (repeatable, so hashes are known)."""
    seed = hashlib.sha256(path.encode()).digest()
    size = SAMPLE_SIZES[path]
    return (seed * (size // len(seed) + 1))[:size]


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path not in SAMPLE_SIZES:
            self.send_error(404)
            return
        body = sample_bytes(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the server quiet; the pipeline logs what it downloads."""


@cache
def _local_server() -> str:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, name="example-http", daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


_server_lock = threading.Lock()


def resolve(url: str) -> str:
    """Turn a sample path into a URL of the local server, started on first use."""
    if not url.startswith("/"):
        return url
    with _server_lock:  # workers ask at once; start one server, not one each
        return _local_server() + url


URLS = tuple(os.environ.get("DOWNLOAD_URLS", "").split()) or tuple(SAMPLE_SIZES)
"""What to download: the given URLs, or the local server's sample paths."""


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
class MsgDownloaded:
    """One finished download for the manifest."""

    url: str
    file: str
    size: int
    sha256: str


def schema(conn: sqlite3.Connection) -> None:
    """Create the manifest table."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS downloads (file TEXT PRIMARY KEY, url TEXT NOT NULL, "
        "size INTEGER NOT NULL, sha256 TEXT NOT NULL)"
    )


def record_downloads(conn: sqlite3.Connection, msgs: list[MsgDownloaded]) -> None:
    """Store (or refresh) each download's manifest row, keyed by the file it wrote."""
    conn.executemany(
        "INSERT INTO downloads VALUES (?, ?, ?, ?) ON CONFLICT(file) DO UPDATE SET "
        "url = excluded.url, size = excluded.size, sha256 = excluded.sha256",
        [(m.file, m.url, m.size, m.sha256) for m in msgs],
    )


pipe = Pipeline(
    "http_downloader", db="downloads.db", schema=schema, handlers={MsgDownloaded: record_downloads}
)


@pipe.task(retries=2, backoff=0.2, retry_on=(OSError,))
def download(ctx: Context, url: str) -> dict[str, int | str]:
    """Stream one URL to a temporary file, hashing as it goes, then move it into place."""
    full = resolve(url)
    name = Path(urllib.parse.urlparse(full).path).name or f"download-{ctx.task_id}"
    OUT.mkdir(parents=True, exist_ok=True)
    target = OUT / name
    partial = target.with_suffix(target.suffix + ".part")
    digest = hashlib.sha256()
    size = 0
    with http_get(full) as response, partial.open("wb") as fh:
        total = int(response.headers.get("Content-Length") or 0)
        while chunk := response.read(CHUNK):
            fh.write(chunk)
            digest.update(chunk)
            size += len(chunk)
            ctx.progress(size, total, f"{size // 1024} KiB")
    partial.replace(target)
    ctx.emit(MsgDownloaded(full, target.name, size, digest.hexdigest()))
    return {"file": target.name, "bytes": size}


pipe.map(download, URLS)

if __name__ == "__main__":
    pipe.run().raise_for_status()
