"""Fingerprints: short stable texts that change when a task's input changes.

A cached task (``@pipe.task(cache=True)``) is recognised across runs by its key, its
fingerprint and its ``cache_version``. By default the fingerprint is a hash of its item (or of
the upstream result it consumes); ``cache_key=`` replaces it, typically with `file`::

    @pipe.task(cache=True, cache_key=pipeloom.fingerprint.file)
    def parse(ctx, path): ...
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path, PurePath
from typing import Any

__all__ = ["file", "of"]

_CHUNK = 1 << 20


def file(path: str | os.PathLike[str], *, content: bool = False) -> str:
    """Fingerprint a file: its size and modification time, or a hash of its bytes.

    Size and mtime cost one ``stat`` and change whenever a tool rewrites the file; a content
    hash (``content=True``) reads it all, and survives a copy that keeps the bytes but not
    the mtime.

    Raises:
        OSError: the file cannot be read (the task then fails and is not cached).
    """
    target = Path(path)
    if content:
        digest = hashlib.sha256()
        with target.open("rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                digest.update(chunk)
        return f"sha256:{digest.hexdigest()}"
    st = target.stat()
    return f"stat:{st.st_size}:{st.st_mtime_ns}"


def _plain(value: Any) -> Any:
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(map(repr, value))
    return repr(value)


def of(value: Any) -> str:
    """A stable hash of a value (JSON with sorted keys; paths, dates and sets made plain).

    An object without a JSON form is hashed by its ``repr``: one that shows a memory address
    never matches, so such a task is simply never served from the cache.
    """
    text = json.dumps(value, sort_keys=True, default=_plain, separators=(",", ":"))
    return "v:" + hashlib.sha256(text.encode()).hexdigest()[:32]
