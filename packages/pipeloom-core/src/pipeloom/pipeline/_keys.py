"""Task keys: the stable name of one unit of work, the same in every run.

A key is ``"<task name>:<item key>"`` and is stored on ``task_runs.task_key``; resume
recognises work by it, so the same item must give the same key in every run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import PurePath
from typing import Any

from pipeloom._text import shorten_middle

__all__ = ["KEY_MAX_CHARS", "item_key", "label"]

log = logging.getLogger("pipeloom.pipeline")

KEY_MAX_CHARS = 200
"""Longer keys keep a readable prefix and end in a hash of the whole key."""
_NAME_MAX_CHARS = 80


def item_key(item: object, key: Callable[[Any], object] | None = None) -> str:
    """Derive a stable key from an item: the same item gives the same key in every run.

    Strings, numbers and paths are used as they are; lists, tuples and dicts of those as
    compact JSON; other objects by their ``repr``. Keys over `KEY_MAX_CHARS` keep a prefix and
    end in a hash of the whole.

    Args:
        item: the mapped item.
        key: the user's ``key=`` function; its return value is turned into text.

    Raises:
        TypeError: the item's repr holds a memory address, so it would differ in every run.
    """
    text = _plain_key(key(item) if key is not None else item)
    if len(text) > KEY_MAX_CHARS:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        text = f"{text[: KEY_MAX_CHARS - 20]}…#{digest}"
    return text


def _plain_key(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float | PurePath):
        return str(value)
    if isinstance(value, list | tuple | dict):
        try:
            return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_json_leaf)
        except (TypeError, ValueError):
            log.debug("key of %s is not JSON; using its repr", type(value).__name__)
    text = repr(value)
    if " at 0x" in text:
        raise TypeError(
            f"cannot derive a stable key from {text[:80]}: its repr holds a memory address, "
            "which changes every run; pass key=lambda item: ... to pipe.map()"
        )
    return text


def _json_leaf(value: object) -> object:
    if isinstance(value, PurePath):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not a simple key value")


def label(key: str) -> str:
    """A task's display name: its key, cut to fit a progress bar's label."""
    # Cut in the middle: a key's end (the file, the page) tells tasks apart as much as its start.
    return shorten_middle(key, _NAME_MAX_CHARS)
