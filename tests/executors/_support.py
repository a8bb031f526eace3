"""Helpers the executor tests share."""

from __future__ import annotations

import multiprocessing
from pathlib import Path


def pipeloom_children() -> list[object]:
    """Worker processes pipeloom started and that are still alive (a Dask cluster's are not)."""
    return [c for c in multiprocessing.active_children() if c.name == "pipeloom-process"]


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
