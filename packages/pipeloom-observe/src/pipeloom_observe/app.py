"""Datasette configured for browsing one run database, and the server behind ``pipeloom observe``.

The file is opened as a normal (mutable) Datasette database: Datasette then reads through
``mode=ro`` connections that see the WAL, so rows a running pipeline commits show up on the
next page load. Immutable mode would skip the WAL and freeze the view.

Datasette 0.65 builds its connection URI as ``file:{path}?mode=ro`` without escaping, so a
file named ``runs#2.db`` opened ``runs`` (created, writable) instead. pipeloom therefore
hands Datasette a database whose connections come from `pipeloom.db.connect_readonly`: an
escaped URI, ``mode=ro`` and ``PRAGMA query_only``, so no query a visitor types can write.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import sqlite3
import sys
import webbrowser
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from datasette.app import Datasette
from datasette.database import Database
from datasette.plugins import pm

from pipeloom._text import printable
from pipeloom.db import connect_readonly
from pipeloom.errors import DatabaseError, PipeloomError
from pipeloom_observe import plugin
from pipeloom_observe._sqlite import file_layout
from pipeloom_observe.metadata import default_metadata, layout_note, merge_metadata

__all__ = [
    "SETTINGS",
    "build_datasette",
    "database_note",
    "exposure_warning",
    "register_plugin",
    "serve",
]

SETTINGS: Final[dict[str, Any]] = {
    # A query over a large history must not tie up the server; 0.65's default is 1 s.
    "sql_time_limit_ms": 3_000,
    # A facet over millions of task rows gives up within this; on 10M rows two facets that
    # ran to 500 ms each made the raw task_runs page take 1.1 s (benchmarks/observe_scale.py).
    "facet_time_limit_ms": 200,
    "max_returned_rows": 1_000,
    # Suggesting facets probes every column; on 500k tasks that is 1.5 s of a 1.7 s page.
    "suggest_facets": False,
    # A copy taken while a pipeline writes would miss the WAL's rows; use the file itself.
    "allow_download": False,
}
"""Datasette settings for run history."""


def database_note(db_path: str | Path) -> str | None:
    """Say what pipeloom cannot show for this file (older schema, no pipeloom tables).

    Returns:
        One sentence, or None when the file holds the current schema.

    Raises:
        DatabaseError: the file is missing or is not a SQLite database.
    """
    path, kind = file_layout(db_path)
    return layout_note(kind, str(path))


class _ReadOnlyFile(Database):  # type: ignore[misc]  # Datasette ships no type hints
    """A Datasette database whose every connection is pipeloom's read-only one.

    Only `connect` changes: Datasette keeps using ``path`` for the file's size, name and
    modification time, which is why the path itself is not escaped for it.
    """

    def connect(self, write: bool = False) -> sqlite3.Connection:
        """Open an escaped ``mode=ro``, ``query_only`` connection; refuse to open for writing.

        Raises:
            DatabaseError: asked for a write connection, or the file cannot be read.
        """
        if write:
            raise DatabaseError(f"{self.path}: pipeloom observe never writes to the run database")
        conn = connect_readonly(self.path, check_same_thread=False)
        self._all_file_connections.append(conn)
        return conn


def build_datasette(
    db_path: str | Path, *, metadata_extra: Mapping[str, Any] | None = None
) -> Datasette:
    """Build (but do not start) Datasette for one run database.

    Args:
        db_path: an existing SQLite file; it is never created or written.
        metadata_extra: metadata merged over the defaults (``--metadata extra.yml``).

    Returns:
        The Datasette instance; call ``await ds.invoke_startup()`` before using its client.

    Raises:
        DatabaseError: the file is missing or is not a SQLite database.
    """
    path, kind = file_layout(db_path)
    register_plugin()
    metadata = default_metadata(path.stem, kind, path.name)
    if metadata_extra:
        if "description" in metadata_extra and "description_html" not in metadata_extra:
            # Datasette shows description_html first; the user's own text must win.
            metadata.pop("description_html", None)
        metadata = merge_metadata(metadata, metadata_extra)
    ds = Datasette(files=[str(path)], metadata=metadata, settings=dict(SETTINGS))
    # Swap the database Datasette made (its URI is built unescaped) for a read-only one, under
    # the same name, before anything has connected to it.
    (name,) = (key for key, db in ds.databases.items() if db.path == str(path))
    ds.remove_database(name)
    ds.add_database(_ReadOnlyFile(ds, path=str(path), is_mutable=True), name=name)
    return ds


def register_plugin() -> None:
    """Register pipeloom's Datasette plugin in this process (once; Datasette's registry is global).

    It is in-package rather than an installed plugin so that it goes wherever
    ``pipeloom observe`` goes, and a plain ``datasette`` run elsewhere is left alone.
    """
    if not pm.is_registered(plugin):
        pm.register(plugin, name=plugin.PLUGIN_NAME)
    # Every handle_exception hook runs, and Datasette's prints ~300 lines for a mistyped
    # query; pipeloom's answers those in one line and hands the rest to Datasette's.
    if pm.get_plugin(plugin.DEFAULT_EXCEPTION_HANDLER) is not None:
        pm.unregister(name=plugin.DEFAULT_EXCEPTION_HANDLER)


def exposure_warning(host: str) -> str | None:
    """Return a warning when ``host`` lets other machines reach the server, else None."""
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return (
        f"warning: serving on {host}, not 127.0.0.1: anyone who can reach this port can read "
        "the whole run history (task results and error text included)"
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PipeloomError(
            f"cannot listen on {host}:{port} ({exc.strerror}); pass another --port or --host"
        ) from exc
    return sock


def serve(
    db_path: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8001,
    open_browser: bool = False,
    metadata_extra: Mapping[str, Any] | None = None,
) -> None:
    """Serve the run database with Datasette in this process until interrupted.

    Warnings (a non-loopback host, a file pipeloom's queries cannot read) go to stderr; the
    address goes to stdout.

    Raises:
        DatabaseError: the file is missing or is not a SQLite database.
        PipeloomError: the address cannot be bound.
    """
    import uvicorn

    path = Path(db_path)
    ds = build_datasette(path, metadata_extra=metadata_extra)
    asyncio.run(ds.invoke_startup())
    for warning in (exposure_warning(host), database_note(path)):
        if warning:
            print(printable(warning), file=sys.stderr, flush=True)
    # Binding here, before uvicorn starts, turns "address in use" into one clear error.
    sock = _bind(host, port)
    # A wildcard address is where the server listens, not somewhere a browser can go.
    reachable = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    shown_host = f"[{reachable}]" if ":" in reachable else reachable
    url = f"http://{shown_host}:{sock.getsockname()[1]}/"
    print(f"pipeloom observe: browsing {printable(path)} at {url} (Ctrl-C to stop)", flush=True)
    if open_browser:
        webbrowser.open(url)
    config = uvicorn.Config(ds.app(), log_level="warning", lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])
