"""Settings read from the environment: a bad value is warned about and ignored, never raised.

Such a setting tunes how a run stops or prints (``PIPELOOM_STOP_GRACE``,
``PIPELOOM_PROGRESS_EVERY``); a typo in a cron file must not stop the run's work.
"""

from __future__ import annotations

import logging
import math
import os

__all__ = ["env_seconds"]

log = logging.getLogger("pipeloom")


def env_seconds(name: str, default: float, low: float, high: float = math.inf) -> float:
    """Seconds from environment variable ``name``; ``default`` when unset or unusable.

    Usable is a finite number from ``low`` to ``high``; anything else gets one warning that
    names the variable, its value and what it takes.
    """
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if math.isfinite(value) and low <= value <= high:
        return value
    takes = f"from {low:g} to {high:g}" if math.isfinite(high) else f"{low:g} or more"
    log.warning(
        "%s=%r: use seconds %s (e.g. %s=%g); using %g",
        name,
        raw[:40],
        takes,
        name,
        default * 4,
        default,
    )
    return default
