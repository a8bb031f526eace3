"""One color per status, stale included: the same in badges, lanes and every chart.

`STATUS_COLORS` is used by the plugin's cells and pages and by the dashboards' vega-lite
scales (a fixed domain and range), so a color never shifts when a new status appears.
"""

from __future__ import annotations

from typing import Final

__all__ = ["STATUS_COLORS", "UNKNOWN_COLOR", "status_color"]

STATUS_COLORS: Final[dict[str, str]] = {
    "queued": "#cbd5e1",
    "running": "#3b82f6",
    "done": "#16a34a",
    "skipped": "#86efac",
    "error": "#dc2626",
    "timeout": "#f97316",
    "interrupted": "#9333ea",
    "upstream_failed": "#fca5a5",
    "cancelled": "#64748b",
    "stale": "#eab308",
}
"""One fixed color per task and run status (and ``stale``, a running run nobody keeps alive).

Every status in `pipeloom.status.TASK_STATUSES` and ``RUN_STATUSES`` has one (a test checks):
a new status needs its color here."""

UNKNOWN_COLOR: Final = "#e5e7eb"


def status_color(status: str) -> str:
    """The color of ``status`` (a light grey for a status pipeloom does not know)."""
    return STATUS_COLORS.get(status, UNKNOWN_COLOR)
