"""Liveness of a run as a lease: the writer's heartbeat, who wrote it, and when it is stale.

A running run's writer refreshes ``pipeline_runs.heartbeat_at`` at least every third of
``lease_s`` seconds, also when no messages flow. Once ``heartbeat_at`` is older than
``lease_s``, nobody is keeping the run alive: readers show it as *stale* (without writing),
and the next writer to open the file marks it ``interrupted``.

A pid says something only inside one PID namespace of one boot of one host, so the writer
also records ``owner`` (host, PID namespace, boot id). Another writer may trust "that pid is
gone" to mark a run interrupted before its lease expires only when both owners are equal and
fully known; otherwise it waits for the lease (containers sharing a host name, a reboot).
"""

from __future__ import annotations

import functools
import logging
import socket
from pathlib import Path
from typing import Final

__all__ = [
    "DEFAULT_LEASE_S",
    "STALE_SQL",
    "heartbeat_every",
    "owner_identity",
    "provable_owner",
    "stale_sql",
]

log = logging.getLogger("pipeloom.lease")

DEFAULT_LEASE_S: Final = 15.0
"""Seconds after its last heartbeat a run counts as stale (the writer beats every 5 s)."""

_PID_NS: Final = Path("/proc/self/ns/pid")
_BOOT_ID: Final = Path("/proc/sys/kernel/random/boot_id")
_UNKNOWN: Final = "?"


def heartbeat_every(lease_s: float) -> float:
    """Seconds between heartbeats for a lease: a third of it, so two beats may be missed."""
    return lease_s / 3.0


def stale_sql(alias: str = "") -> str:
    """A SQL boolean that is true for a running run whose lease has expired.

    The one definition of stale, used by ``pipeloom status``, observe and the writer (which
    marks such runs interrupted). Rows written before leases existed (no ``heartbeat_at``)
    are never stale here: only their writer's pid can tell, on their host.

    Args:
        alias: table alias of ``pipeline_runs`` in the query (``"r"`` for ``r.status``).
    """
    p = f"{alias}." if alias else ""
    return (
        f"({p}status = 'running' AND {p}heartbeat_at IS NOT NULL AND {p}lease_s IS NOT NULL "
        f"AND (julianday('now') - julianday({p}heartbeat_at)) * 86400.0 > {p}lease_s)"
    )


STALE_SQL: Final = stale_sql()
"""`stale_sql` for an unaliased ``pipeline_runs``."""


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii").strip() or _UNKNOWN
    except (OSError, UnicodeDecodeError) as exc:
        log.debug("cannot read %s (%s); pid checks fall back to the lease", path, exc)
        return _UNKNOWN


def _pid_namespace() -> str:
    try:
        return _PID_NS.readlink().as_posix()
    except OSError as exc:
        log.debug("cannot read %s (%s); pid checks fall back to the lease", _PID_NS, exc)
        return _UNKNOWN


@functools.cache
def owner_identity() -> str:
    """Who this process is, for ``pipeline_runs.owner``: host, PID namespace and boot.

    ``"myhost pidns=pid:[4026531836] boot=61e4937a-..."``; a part that cannot be read (not
    Linux) is ``?``, and then no pid check is trusted (see `provable_owner`).
    """
    return f"{socket.gethostname()} pidns={_pid_namespace()} boot={_read(_BOOT_ID)}"


def provable_owner(owner: str | None) -> bool:
    """Tell whether ``owner`` is this process's host, PID namespace and boot, all known.

    Only then does "its pid no longer exists" prove that a run's writer is gone.
    """
    mine = owner_identity()
    return owner is not None and owner == mine and f"={_UNKNOWN}" not in mine
