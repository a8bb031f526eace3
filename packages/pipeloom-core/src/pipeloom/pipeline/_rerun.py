"""Rerun: which tasks of a resumed run must run again although an earlier run finished them.

``pipe.run(rerun=["parse"])`` (``--rerun parse``), ``rerun=["parse:AA-*"]`` or
``rerun_from="parse"`` (``--from parse``) resume the latest run, but the tasks that match run
again. What consumes them needs nothing here: a chained task runs when its upstream ran in
this run, and a fan-in when any task it gathers did (`pipeloom.pipeline._tasks.Flow`), so everything
downstream of a rerun task runs again and everything else is skipped as on resume.

A pattern is a stage (task) name, a task key (``parse:data/a.csv``) or a key glob
(``parse:AA-*``, ``*`` ``?`` and ``[...]`` as in shell globs). One that matches nothing is a
one-line error listing the stages, checked before anything runs.
"""

from __future__ import annotations

import fnmatch
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pipeloom.errors import PipelineError

__all__ = ["Rerun", "select"]


@dataclass(frozen=True, slots=True)
class Rerun:
    """The tasks a run reruns: whole stages, and keys matching some pattern."""

    stages: frozenset[str]
    """Stages every task of which runs again."""
    keys: tuple[str, ...]
    """Key globs (``stage:item``); a task whose key matches one runs again."""

    def matches(self, stage: str, key: str) -> bool:
        """Tell whether the task of ``stage`` with ``key`` must run again."""
        if stage in self.stages:
            return True
        return any(fnmatch.fnmatchcase(key, pattern) for pattern in self.keys)

    def request(self, patterns: Sequence[str], rerun_from: str | None) -> dict[str, Any]:
        """What the run row records of the request (``pipeline_runs.request``)."""
        out: dict[str, Any] = {}
        if patterns:
            out["rerun"] = list(patterns)
        if rerun_from is not None:
            out["from"] = rerun_from
        return out


def _listed(stages: Iterable[str]) -> str:
    return ", ".join(sorted(stages)) or "none"


def select(
    pipeline: str,
    stages: Sequence[str],
    patterns: Sequence[str],
    rerun_from: str | None,
    conn: sqlite3.Connection | None,
    run_id: int | None,
) -> Rerun:
    """Check the patterns against the pipeline's stages and the run being resumed.

    Args:
        pipeline: the pipeline's name, for messages.
        stages: the names of its stages (tasks mapped in it).
        patterns: stage names, keys or key globs.
        rerun_from: a stage to rerun with everything downstream (the same as its name as a
            pattern: what consumes it runs again anyway).
        conn: a read connection on the run database (the resume reader's).
        run_id: the run being resumed, whose keys key patterns must match.

    Raises:
        PipelineError: a pattern or ``rerun_from`` matches nothing; one line listing the stages.
    """
    names = set(stages)
    whole: set[str] = set()
    keys: list[str] = []
    asked = [*patterns, *([rerun_from] if rerun_from is not None else [])]
    for pattern in asked:
        if not isinstance(pattern, str) or not pattern.strip():
            raise PipelineError(
                f"pipeline {pipeline!r}: rerun pattern {pattern!r}; use a stage name, a task "
                f"key or a key glob (stages: {_listed(names)})"
            )
        if ":" not in pattern:
            found = {s for s in names if fnmatch.fnmatchcase(s, pattern)}
            if not found:
                option = "--from" if pattern == rerun_from else "--rerun"
                raise PipelineError(
                    f"pipeline {pipeline!r}: {option} {pattern!r} matches no stage; its stages: "
                    f"{_listed(names)} (or pass a task key such as {sorted(names or ['x'])[0]}:...)"
                )
            whole |= found
            continue
        stage_glob = pattern.split(":", 1)[0]
        if not any(fnmatch.fnmatchcase(s, stage_glob) for s in names):
            raise PipelineError(
                f"pipeline {pipeline!r}: --rerun {pattern!r} names no stage of it; its stages: "
                f"{_listed(names)}"
            )
        if not _any_key(conn, run_id, pattern):
            where = f"run {run_id}" if run_id is not None else "any earlier run"
            raise PipelineError(
                f"pipeline {pipeline!r}: --rerun {pattern!r} matches no task key of {where}; "
                f"its stages: {_listed(names)} (`pipeloom status --task` finds keys)"
            )
        keys.append(pattern)
    return Rerun(frozenset(whole), tuple(keys))


def _any_key(conn: sqlite3.Connection | None, run_id: int | None, pattern: str) -> bool:
    """Whether the resumed run holds a key matching ``pattern`` (fnmatch rules, in Python)."""
    if conn is None or run_id is None:
        return False
    cursor = conn.execute(
        "SELECT task_key FROM task_runs WHERE run_id = ? AND task_key IS NOT NULL", (run_id,)
    )
    try:
        return any(fnmatch.fnmatchcase(str(row[0]), pattern) for row in cursor)
    finally:
        cursor.close()
