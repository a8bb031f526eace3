"""Pipeline parameters: declared with their defaults, overridden per run, read as ``ctx.params``.

``Pipeline(params={"since": date(2024, 1, 1), "limit": 100})`` declares the parameters and
their defaults; ``pipe.run(params={"since": "2024-06-01"})`` and ``pipeloom run FILE:pipe
--param since=2024-06-01`` override them. A value is converted to its default's type (int,
float, bool, str, date, datetime, Path), so a task reads ``ctx.params["since"]`` as a `date`
however the run was started. The run row stores the values used, as JSON; a resume with other
values is refused (its done tasks were made with the old ones) unless the caller insists.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any, Final

from pipeloom.errors import PipelineError

__all__ = ["RESERVED", "differences", "param_changes", "resolve", "stored", "to_json"]

RESERVED: Final = frozenset({"resumed_from"})
"""Keys pipeloom itself stores beside the parameters on the run row."""

_TRUE: Final = frozenset({"1", "true", "yes", "on", "y", "t"})
_FALSE: Final = frozenset({"0", "false", "no", "off", "n", "f"})


def _declared(declared: Mapping[str, Any]) -> str:
    return ", ".join(sorted(declared)) or "none"


def _kind(default: Any) -> str:
    return "text" if default is None else type(default).__name__


def _convert(value: Any, default: Any) -> Any:
    """``value`` as the type of ``default``; text is parsed, a value of that type is kept."""
    if default is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError("use true or false")
    if isinstance(default, PurePath):
        if isinstance(value, str | PurePath):
            return type(default)(value)
        raise ValueError("use a path")
    if isinstance(default, dt.datetime):
        if isinstance(value, dt.datetime):
            return value
        return dt.datetime.fromisoformat(str(value))
    if isinstance(default, dt.date):
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return value
        return dt.date.fromisoformat(str(value))
    if isinstance(default, int):
        if isinstance(value, bool | float):
            raise ValueError("use a whole number")
        return int(value) if isinstance(value, int) else int(str(value).strip())
    if isinstance(default, float):
        if isinstance(value, bool):
            raise ValueError("use a number")
        return float(value) if isinstance(value, int | float) else float(str(value).strip())
    if isinstance(default, str):
        return value if isinstance(value, str) else str(value)
    if isinstance(value, type(default)):
        return value
    raise ValueError(f"use a {type(default).__name__}")


def resolve(
    pipeline: str, declared: Mapping[str, Any], given: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Return the parameters of one run: the declared defaults with ``given`` applied.

    Raises:
        PipelineError: a name is not declared, or a value cannot become its default's type;
            one line naming the parameter, the value and the declared ones.
    """
    values = dict(declared)
    for name, value in (given or {}).items():
        if name not in declared:
            raise PipelineError(
                f"pipeline {pipeline!r}: unknown parameter {name!r} (value {value!r}); declared "
                f"parameters: {_declared(declared)} (declare it in Pipeline(params={{...}}))"
            )
        default = declared[name]
        try:
            values[name] = _convert(value, default)
        except (TypeError, ValueError) as exc:
            raise PipelineError(
                f"pipeline {pipeline!r}: parameter {name}={value!r} is not a valid "
                f"{_kind(default)} ({exc}); its default is {default!r}; declared parameters: "
                f"{_declared(declared)}"
            ) from None
    return values


def to_json(values: Mapping[str, Any]) -> dict[str, Any]:
    """The values as JSON-able data, as stored on the run row (dates ISO, paths text)."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, dt.date | dt.datetime):
            out[name] = value.isoformat()
        elif isinstance(value, PurePath):
            out[name] = str(value)
        else:
            out[name] = json.loads(json.dumps(value, default=str))
    return out


def stored(params_text: str | None) -> dict[str, Any]:
    """The parameters a run row stores (its ``params`` JSON without pipeloom's own keys)."""
    try:
        data = json.loads(params_text or "{}")
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if k not in RESERVED}


def differences(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``name: old -> new`` for each parameter that differs between two runs (JSON forms)."""
    out = []
    for name in sorted(set(before) | set(now)):
        old, new = before.get(name, "(unset)"), now.get(name, "(unset)")
        if old != new:
            out.append(f"{name}: {old!r} -> {new!r}")
    return out


def param_changes(previous: Any, now: Mapping[str, Any]) -> list[str]:
    """The differences between the parameters of the run being resumed and this run's.

    ``previous`` is the resume reader (`pipeloom.pipeline._resume.Previous`): its connection
    and run id.
    """
    row = previous.conn.execute(
        "SELECT params FROM pipeline_runs WHERE id = ?", (previous.run_id,)
    ).fetchone()
    return differences(stored(row[0] if row is not None else None), now)
