"""Resource limits: how many tasks may use a resource at once, and how often one may start.

``workers=16`` means up to 16 simultaneous calls to one API. A pipeline names its resources
and what each allows, and each task what it uses::

    pipe.limit("warehouse", 2)        # at most 2 tasks using it at once
    pipe.limit("api", rate="10/s")    # at most 10 starts a second, evenly spaced

    @pipe.task(uses="warehouse")
    def load(ctx, path): ...

Enforced at admission, in the driver, on every executor: a task whose resource is full (or
whose next start is not due) is held back and the run takes the next task from its source
instead, so tasks that do not use the resource never wait behind it. `Gate` sits between
the pipeline's task stream and the engine: the engine reads tasks from it (on its admitter
thread, where a source may block) and tells it of each completion through the run's
``follow_up`` hook, the engine's existing seam; nothing in the engine knows about limits.

A task that holds resources gives them back however it ends: done, failed, timed out, killed
with its worker process, or never run at all (its executor refused it, or the run stopped
first). The engine reports every task it took to ``follow_up``, with `NOT_RUN` as the
returned value for one that never ran; a rate's start is given back too for such a task when
no later task has taken one since, so a refused task costs the API nothing.

Limits (as built): a task holds its resource for all its attempts, retries included, and a
rate meters the starts of tasks, not each retry; at most `PARK_LIMIT` tasks are held back
(beyond that, the run waits for the resource before reading further).
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import Any, Final

from pipeloom.errors import PipelineError
from pipeloom.messages import TaskDef

__all__ = ["NOT_RUN", "PARK_LIMIT", "Clock", "Gate", "Limit", "make_limit", "parse_rate"]

PARK_LIMIT: Final = 10_000
"""Most tasks held back for a busy resource before the run stops reading its source."""

_RATE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_PER: Final = {
    **{"s": 1, "sec": 1, "second": 1},
    **{"m": 60, "min": 60, "minute": 60},
    **{"h": 3600, "hour": 3600},
}


def parse_rate(text: str | float) -> float:
    """Starts per second from ``"10/s"``, ``"600/m"``, ``"3600/h"`` or a number per second.

    Raises:
        PipelineError: naming the value and the forms it takes.
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        value = float(text)
    else:
        match = _RATE.match(str(text))
        if match is None:
            raise PipelineError(f"rate={text!r}: use starts per time, e.g. '10/s', '600/m'")
        value = float(match.group(1)) / _PER[match.group(2)]
    if not 0 < value < 1e9:
        raise PipelineError(f"rate={text!r}: use more than 0 starts per time, e.g. '10/s'")
    return value


class _NotRun:
    """The type of `NOT_RUN`."""

    def __repr__(self) -> str:
        return "NOT_RUN"


NOT_RUN: Final = _NotRun()
"""What ``follow_up`` receives as the returned value of a task that never ran (its executor
refused it): its resources, rate starts included, are given back."""


@dataclass(frozen=True, slots=True)
class Limit:
    """One named resource: a capacity (tasks at once) and/or a rate (starts per second)."""

    name: str
    capacity: int | None = None
    rate: float | None = None


def make_limit(name: str, capacity: int | None = None, rate: str | float | None = None) -> Limit:
    """A checked `Limit`: ``make_limit("warehouse", 2)``, ``make_limit("api", rate="10/s")``.

    Raises:
        PipelineError: no capacity and no rate, or one out of range.
    """
    if capacity is None and rate is None:
        raise PipelineError(
            f"limit {name!r}: give a capacity (pipe.limit({name!r}, 2)) or a rate "
            f"(pipe.limit({name!r}, rate='10/s')), or both"
        )
    if capacity is not None and (
        isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1
    ):
        raise PipelineError(
            f"limit {name!r}, capacity {capacity!r}: use a whole number of tasks, 1 or more"
        )
    return Limit(name, capacity, None if rate is None else parse_rate(rate))


class Clock:
    """Time as the gate reads it and waits on it; a test passes one that only pretends.

    The real one is `time.monotonic` and `threading.Condition.wait`. A virtual clock whose
    ``wait`` advances its time instead of sleeping drives a rate over minutes in microseconds
    (tests/core/test_limits.py), so what is asserted is the gate's arithmetic, not the
    machine's scheduling.
    """

    def now(self) -> float:
        """Seconds on a clock that never goes back."""
        return time.monotonic()

    def wait(self, cond: threading.Condition, timeout: float | None) -> None:
        """Wait on ``cond`` (held) for a notify, or ``timeout`` seconds (None: no limit)."""
        cond.wait(timeout)


class _Use:
    """A resource's state at admission: tasks holding it and when the next may start."""

    __slots__ = ("in_use", "last_key", "last_start", "limit", "next_start")

    def __init__(self, limit: Limit) -> None:
        self.limit = limit
        self.in_use = 0
        self.next_start = 0.0
        self.last_start = 0.0
        """``next_start`` before the latest take (what giving that take back restores)."""
        self.last_key: int | None = None
        """The task that took the latest start: only its start can be given back."""

    def wait(self, now: float) -> float | None:
        """Seconds until one more task may start: 0 now, None until a holder finishes."""
        cap = self.limit.capacity
        if cap is not None and self.in_use >= cap:
            return None
        return max(0.0, self.next_start - now) if self.limit.rate else 0.0

    def take(self, now: float, key: int) -> None:
        self.in_use += 1
        if self.limit.rate:
            # Evenly spaced: the k-th start is never before the first + k / rate.
            self.last_start, self.last_key = self.next_start, key
            self.next_start = max(now, self.next_start) + 1.0 / self.limit.rate

    def give_back(self, key: int, ran: bool) -> None:
        self.in_use -= 1
        if not ran and self.last_key == key:
            # Nobody started after it: as if it had never been admitted. A start already
            # given to a later task is kept (giving this one back would put two together).
            self.next_start, self.last_key = self.last_start, None


class _Gated:
    """A source read through a gate."""

    def __init__(self, gate: Gate, source: Iterable[TaskDef]) -> None:
        self._gate = gate
        self._source = source

    def __iter__(self) -> Iterator[TaskDef]:
        return self._gate._gen(iter(self._source))


class _SizedGated(_Gated):
    """A sized source read through a gate: the run keeps its planned total."""

    def __len__(self) -> int:
        return len(self._source)  # type: ignore[arg-type]


def _key(task: Any) -> int:
    return int(getattr(task, "task_id", id(task)))


class Gate:
    """Admits a pipeline's tasks only when their resources allow (see the module docstring)."""

    def __init__(
        self,
        limits: Mapping[str, Limit],
        uses: Callable[[Any], Sequence[str]],
        clock: Clock | None = None,
    ) -> None:
        """Start with every resource free.

        Args:
            limits: the pipeline's resources by name.
            uses: the resources one task uses (empty: it is never held back).
            clock: where time comes from (a test's virtual clock; default the real one).
        """
        self._uses_of = uses
        self._clock = clock or Clock()
        self._state = {name: _Use(limit) for name, limit in limits.items()}
        self._cond = threading.Condition()
        self._parked: dict[tuple[str, ...], deque[tuple[int, Any]]] = {}
        """Held-back tasks by the resources they use, oldest first (one scan per group)."""
        self._waiting = 0
        self._seq = 0
        self._holding: dict[int, tuple[str, ...]] = {}
        self._open = 0
        """Tasks handed to the engine and not completed: any may still make follow-ups."""
        self._closed = False

    def wrap(self, source: Iterable[TaskDef]) -> Iterable[TaskDef]:
        """The source as the engine should read it (keeping its length, when it has one)."""
        if isinstance(source, Sized):
            return _SizedGated(self, source)
        return _Gated(self, source)

    def follow_up(
        self, inner: Callable[[Any, Any], Iterable[Any]] | None
    ) -> Callable[[Any, Any], list[Any]]:
        """The engine's completion hook: free the task's resources, then ``inner``'s follow-ups.

        Follow-up tasks (a stage's next step) are handed out by the gate's stream, before any
        new source task: at once when they use no busy resource, else when it frees. The
        task's resources are freed before ``inner`` runs and whatever it raises: a task's end
        always frees them, or the run would wait for them forever.
        """

        def hook(task: Any, returned: Any) -> list[Any]:
            with self._cond:
                key = _key(task)
                for name in self._holding.pop(key, ()):
                    self._state[name].give_back(key, returned is not NOT_RUN)
                self._cond.notify_all()
            more: list[Any] = []
            try:
                if inner is not None:
                    more = list(inner(task, None if returned is NOT_RUN else returned))
            finally:
                with self._cond:
                    # Every follow-up comes back through the gate's own stream, none through
                    # the engine's ready list: the slot that waits in this stream holds the
                    # engine's admission lock, so a follow-up handed to the engine could not
                    # be admitted until the stream returned, and the stream waits for it to
                    # finish (a stage chained behind a limited stage deadlocked that way).
                    for follow in more:
                        self._park(follow)
                    self._open -= 1
                    self._cond.notify_all()
            return []

        return hook

    def close(self) -> None:
        """The run is over: a reader still waiting for a resource returns."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _needs(self, task: Any) -> tuple[str, ...]:
        return tuple(sorted({name for name in self._uses_of(task) if name in self._state}))

    def _park(self, task: Any) -> None:
        self._seq += 1
        self._parked.setdefault(self._needs(task), deque()).append((self._seq, task))
        self._waiting += 1

    def _allows(self, names: tuple[str, ...], now: float) -> float | None:
        """0 when every resource allows a start now; else the longest known wait, or None."""
        longest = 0.0
        for name in names:
            wait = self._state[name].wait(now)
            if wait is None:
                return None
            longest = max(longest, wait)
        return longest

    def _take(self, task: Any, names: tuple[str, ...], now: float) -> None:
        key = _key(task)
        for name in names:
            self._state[name].take(now, key)
        if names:
            self._holding[_key(task)] = names
        self._open += 1

    def _pick(self, now: float) -> tuple[Any, float | None]:
        """The oldest held-back task that may start now, else how long until one may."""
        best: tuple[int, tuple[str, ...]] | None = None
        soonest: float | None = None
        for names, queue in self._parked.items():
            wait = self._allows(names, now)
            if wait == 0.0:
                if best is None or queue[0][0] < best[0]:
                    best = (queue[0][0], names)
            elif wait is not None:
                soonest = wait if soonest is None else min(soonest, wait)
        if best is None:
            return None, soonest
        queue = self._parked[best[1]]
        _, task = queue.popleft()
        if not queue:
            del self._parked[best[1]]
        self._waiting -= 1
        self._take(task, best[1], now)
        return task, None

    def _gen(self, source: Iterator[TaskDef]) -> Iterator[TaskDef]:
        exhausted = False
        while True:
            task: Any = None
            with self._cond:
                while True:
                    if self._closed:
                        return
                    task, wait = self._pick(self._clock.now())
                    if task is not None:
                        break
                    if not exhausted and self._waiting < PARK_LIMIT:
                        break  # read the source, outside the lock (it may block)
                    if exhausted and not self._waiting and self._open <= 0:
                        return
                    self._clock.wait(self._cond, wait)
            if task is None:
                try:
                    fresh = next(source)
                except StopIteration:
                    exhausted = True
                    continue
                with self._cond:
                    names = self._needs(fresh)
                    if self._waiting and names in self._parked:
                        self._park(fresh)  # behind the older ones waiting for the same
                        continue
                    if self._allows(names, self._clock.now()) != 0.0:
                        self._park(fresh)
                        continue
                    self._take(fresh, names, self._clock.now())
                    task = fresh
            yield task
