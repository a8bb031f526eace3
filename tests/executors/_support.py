"""Helpers the executor tests share."""

from __future__ import annotations

import multiprocessing


def pipeloom_children() -> list[object]:
    """Worker processes pipeloom started and that are still alive (a Dask cluster's are not)."""
    return [c for c in multiprocessing.active_children() if c.name == "pipeloom-process"]
