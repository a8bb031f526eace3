"""Formatting and URL parameters shared by the plugin's cells and pages (no routes here)."""

from __future__ import annotations

import math
from typing import Any, Final

from datasette.utils.asgi import BadRequest
from markupsafe import Markup

from pipeloom_observe.colors import STATUS_COLORS, status_color

__all__ = ["MAX_ID", "format_duration", "format_time", "id_param", "status_badge"]


def format_time(value: str) -> str:
    """``2026-01-01T10:00:20.123456+00:00`` -> ``2026-01-01 10:00:20`` (every time is UTC)."""
    text = value.replace("T", " ", 1)
    for cut in (".", "+"):
        if cut in text[10:]:
            text = text[: 10 + text[10:].index(cut)]
    return text.removesuffix("Z")


def format_duration(seconds: float) -> str:
    """Seconds as people read them: ``0.42 s``, ``12.3 s``, ``4 m 05 s``, ``2 h 03 m``."""
    if not math.isfinite(seconds):
        return str(seconds)
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} m {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} m"


def status_badge(status: str, *, stale: bool = False) -> Markup:
    """A colored badge; a stale run also gets the ``stale`` badge."""
    color = status_color(status)
    badge = Markup('<span class="pl-status pl-status-{0}" style="background:{1}">{0}</span>')
    html = badge.format(status, color)
    if stale:
        html += badge.format("stale", STATUS_COLORS["stale"])
    return html


MAX_ID: Final = 2**63 - 1
"""Largest id SQLite stores; a bigger one raised OverflowError in the query (HTTP 500)."""


def id_param(request: Any, name: str, *, low: int = -MAX_ID - 1, high: int = MAX_ID) -> int:
    """Read the URL parameter ``name`` (from the route, else the query string) as an id.

    The one parser for every number a visitor types into a pipeloom URL: a value that is not
    a whole number from ``low`` to ``high`` (huge, NaN, empty, text) is a 400 page with one
    line naming it and the range, and one log line, never a 500 and its traceback.

    Raises:
        BadRequest: naming the parameter, the value and the range.
    """
    raw = request.url_vars.get(name)
    if raw is None:
        raw = request.args.get(name, "")
    text = str(raw).strip()
    shown = text if len(text) <= 40 else f"{text[:20]}...({len(text)} chars)"
    try:
        value = int(text, 10)
    except ValueError:  # also an int of more than 4,300 digits
        value = None
    if value is None or not low <= value <= high:
        raise BadRequest(f"{name} {shown!r}: use a whole number from {low} to {high}")
    return value
