"""Failures across runs: failed tasks grouped by what went wrong (``status --failures``).

An hourly pipeline that fails a few tasks in each run gives a hundred ``pipeloom status``
pages a week; what its owner wants is "these three errors, this often, since when". Each
failed task's error is reduced to its type and a *pattern*: its one-line message with
numbers, ids, paths and quoted values replaced by placeholders, so ``bad row 17 in
'/data/a.csv'`` and ``bad row 9 in '/data/b.csv'`` are one group::

    from pipeloom.failures import failure_groups
    from pipeloom.history import HistoryReader

    with HistoryReader("runs.db") as reader, reader.snapshot() as snap:
        for group in failure_groups(snap, since_days=7):
            print(group.count, group.error_type, group.pattern)
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pipeloom.alerts import status_command
from pipeloom.history import Snapshot
from pipeloom.status import FAILED, sql_in

__all__ = ["FailureGroup", "failure_groups", "normalise", "split_error"]

_RULES: Final = (
    (re.compile(r"'[^']*'|\"[^\"]*\""), "<str>"),
    (re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://\S+"), "<url>"),
    (re.compile(r"(?:[A-Za-z]:)?[\w.\-~]*(?:[\\/][\w.\-~]+)+[\\/]?"), "<path>"),
    (re.compile(r"\b[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\b"), "<id>"),
    (re.compile(r"\b0x[0-9a-fA-F]+\b|\b(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{12,}\b"), "<id>"),
    (re.compile(r"(?<![\w<])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?"), "<n>"),
)
"""Applied in order: quoted values first (they may hold paths and numbers), then URLs,
paths, uuids, long hex ids, numbers."""


def split_error(error: str | None) -> tuple[str, str]:
    """The error's type and message, from a stored traceback's last line.

    A traceback ending in ``ValueError: bad row 3`` gives ``("ValueError", "bad row 3")``; a
    line without a type gives ``("", line)``.
    """
    lines = [line.strip() for line in (error or "").splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    head, sep, rest = last.partition(":")
    if sep and re.fullmatch(r"[A-Za-z_][\w.]*", head):
        return head.rsplit(".", 1)[-1] if "." in head else head, rest.strip()
    return "", last


def normalise(message: str) -> str:
    """``bad row 17 in '/data/a.csv'`` -> ``bad row <n> in <str>``: the group's pattern."""
    text = message
    for pattern, placeholder in _RULES:
        text = pattern.sub(placeholder, text)
    return text[:300]


@dataclass
class FailureGroup:
    """Failed tasks with the same error type and pattern, over many runs."""

    error_type: str
    pattern: str
    count: int = 0
    runs: int = 0
    """Distinct runs it happened in."""
    first_seen: str | None = None
    last_seen: str | None = None
    pipelines: list[str] = field(default_factory=list)
    example_run: int = 0
    example_task: str = ""
    """The latest failed task of the group: its key (or id)."""
    example_error: str = ""
    """That task's one-line error, as it was."""
    example_command: str = ""
    """The ``pipeloom status`` command that shows the example in full."""

    def as_json(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)


def failure_groups(
    snap: Snapshot,
    *,
    since_days: float | None = None,
    pipeline: str | None = None,
    db_label: str = "pipeloom.db",
) -> list[FailureGroup]:
    """Group the failed tasks of every run (or those since a time, of one pipeline).

    Read through one snapshot, so counts and examples come from one moment. Uses the
    ``status`` index: failed rows are read, never the whole task table.

    Returns:
        The groups, the most frequent first (then the most recent).
    """
    where = [f"t.status IN {sql_in(FAILED)}"]
    params: list[Any] = []
    if since_days is not None:
        cutoff = datetime.now(UTC) - timedelta(days=since_days)
        where.append("julianday(coalesce(t.finished_at, r.started_at)) >= julianday(?)")
        params.append(cutoff.isoformat())
    if pipeline is not None:
        where.append("r.name = ?")
        params.append(pipeline)
    rows = snap.conn.execute(
        "SELECT t.run_id, r.name, t.task_id, t.task_key, t.error, "
        "coalesce(t.finished_at, t.started_at, r.started_at) "
        "FROM task_runs t JOIN pipeline_runs r ON r.id = t.run_id "
        f"WHERE {' AND '.join(where)} ORDER BY t.run_id, t.task_id",
        params,
    ).fetchall()
    groups: dict[tuple[str, str], FailureGroup] = {}
    runs: dict[tuple[str, str], set[int]] = {}
    for run_id, name, task_id, key, error, when in rows:
        kind, message = split_error(error)
        ident = (kind, normalise(message))
        group = groups.get(ident)
        if group is None:
            group = groups[ident] = FailureGroup(kind, ident[1])
            runs[ident] = set()
        group.count += 1
        runs[ident].add(int(run_id))
        if name not in group.pipelines:
            group.pipelines.append(str(name))
        if group.first_seen is None or (when and when < group.first_seen):
            group.first_seen = when
        if group.last_seen is None or (when and when >= group.last_seen):
            group.last_seen = when
            ref = key or str(task_id)
            group.example_run = int(run_id)
            group.example_task = ref
            group.example_error = f"{kind}: {message}" if kind else message
            group.example_command = status_command(db_label, int(run_id), ref)
    for ident, group in groups.items():
        group.runs = len(runs[ident])
    newest_first = sorted(groups.values(), key=lambda g: g.last_seen or "", reverse=True)
    return sorted(newest_first, key=lambda g: g.count, reverse=True)
