"""Task generation: the mapped items of a pipeline as a lazy stream of `TaskDef`s.

Items are read as the engine takes tasks, so a generator of millions of items is never held;
each item gets its key, and on a resume the key is looked up in the earlier run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeloom._keys import item_key, label
from pipeloom._text import exc_summary, exc_text
from pipeloom.messages import TaskDef

if TYPE_CHECKING:
    from pipeloom._resume import Previous
    from pipeloom.pipeline import Task

__all__ = ["Job", "Mapped", "task_stream"]

log = logging.getLogger("pipeloom.pipeline")


@dataclass(slots=True)
class Mapped:
    """One ``pipe.map`` call: a task and the items it runs over."""

    task: Task[Any, Any]
    items: Iterable[Any]
    key: Callable[[Any], object] | None
    used: bool = False
    """An earlier run read the items (matters for generators, which can be read once)."""


@dataclass(frozen=True, slots=True)
class Job:
    """What a TaskDef's payload carries from the task generator to the worker."""

    task: Task[Any, Any]
    item: Any = None
    done_in: int | None = None
    """Set when a resumed run already finished this key: the run that did it."""
    problem: str | None = None
    """Set when the task cannot run at all (its key or its items failed)."""


class _SizedTasks:
    """The mapped items as TaskDefs, with a length when every item collection has one."""

    def __init__(self, gen: Callable[[], Iterator[TaskDef]], total: int) -> None:
        self._gen = gen
        self._total = total

    def __len__(self) -> int:
        return self._total

    def __iter__(self) -> Iterator[TaskDef]:
        return self._gen()


def _task_defs(name: str, mapped: list[Mapped], previous: Previous | None) -> Iterator[TaskDef]:
    task_id = 0
    for stage in mapped:
        spec = stage.task
        items = iter(stage.items)
        while True:
            try:
                item = next(items)
            except StopIteration:
                break
            except Exception as exc:
                # A failing item source becomes a failed task, not a dead worker thread.
                reason = exc_summary(exc)
                log.error("pipeline %s: items of %s raised %s", name, spec.name, reason)
                task_id += 1
                problem = f"reading the items of {spec.name} failed\n" + exc_text(exc)
                yield TaskDef(task_id, f"{spec.name}: items", payload=Job(spec, problem=problem))
                break
            task_id += 1
            try:
                key = f"{spec.name}:{item_key(item, stage.key)}"
            except Exception as exc:
                yield TaskDef(
                    task_id,
                    f"{spec.name}:#{task_id}",
                    payload=Job(spec, item, problem=exc_text(exc)),
                )
                continue
            done_in = previous.done_in(key) if previous is not None else None
            yield TaskDef(task_id, label(key), payload=Job(spec, item, done_in), key=key)


def task_stream(name: str, mapped: list[Mapped], previous: Previous | None) -> Iterable[TaskDef]:
    """The TaskDefs of a run, sized when every item collection has a length.

    Args:
        name: the pipeline's name, for log lines.
        mapped: what ``pipe.map`` added, in order.
        previous: the run being resumed, if any.
    """
    if all(isinstance(m.items, Sized) for m in mapped):
        total = sum(len(m.items) for m in mapped if isinstance(m.items, Sized))
        return _SizedTasks(lambda: _task_defs(name, mapped, previous), total)
    return _task_defs(name, mapped, previous)
