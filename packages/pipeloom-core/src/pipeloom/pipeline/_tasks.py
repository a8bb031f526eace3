"""Task generation: the mapped items of a pipeline, and the stages that consume them, as tasks.

A source stage (``pipe.map(task, items)``) reads its items as the engine takes tasks, so a
generator of millions of items is never held. A chained stage (``pipe.map(load, parse)``)
gets one task per upstream task, made when that upstream task completes and handed to the
engine's ``follow_up`` hook, which admits it before any new source item: the chain streams
depth first and nothing of the graph is built up front. A fan-in (``pipe.gather(...)``) gets
one task, made when every task of its upstream stages has completed. On a resume each key is
looked up in the earlier run.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeloom._text import exc_summary, exc_text
from pipeloom.errors import PipelineError
from pipeloom.messages import TaskDef
from pipeloom.pipeline._keys import item_key, label

if TYPE_CHECKING:
    from pipeloom.pipeline._cache import Cache, CacheHit
    from pipeloom.pipeline._rerun import Rerun
    from pipeloom.pipeline._resume import Previous
    from pipeloom.pipeline._task import Task

__all__ = ["Flow", "Handoff", "Job", "Plan", "Stage", "plan_stages"]

log = logging.getLogger("pipeloom.pipeline")


@dataclass(eq=False, slots=True)
class Stage:
    """One ``pipe.map`` or ``pipe.gather`` call: a task and what it runs over.

    Returned by both, so a later stage can name it as its upstream::

        pages = pipe.map(download, urls)
        rows = pipe.map(parse, pages)  # one parse per download, as each finishes
        pipe.gather(summarise, rows)  # once, with every parse's result
    """

    task: Task[Any, Any]
    """The task run for each item."""
    items: Iterable[Any] | None = None
    """A source stage's items (None for a stage fed by another)."""
    key: Callable[[Any], object] | None = None
    """The user's ``key=`` function for the items."""
    upstream: Task[Any, Any] | Stage | None = None
    """The task (every stage that runs it) or the stage whose results this stage consumes."""
    fan_in: bool = False
    """True for ``pipe.gather``: one task after every upstream task, with all their results."""
    used: bool = False
    """An earlier run read the items (matters for generators, which can be read once)."""

    def __repr__(self) -> str:
        """Name the task and what it consumes, which is what a reader checks."""
        if self.upstream is None:
            return f"Stage({self.task.name})"
        up = self.upstream.task.name if isinstance(self.upstream, Stage) else self.upstream.name
        return f"Stage({self.task.name} <- {'all of ' if self.fan_in else ''}{up})"


@dataclass(frozen=True, slots=True)
class Job:
    """What a TaskDef's payload carries from the task generator to the worker."""

    task: Task[Any, Any]
    item: Any = None
    done_in: int | None = None
    """Set when a resumed run already finished this key: the run that did it."""
    problem: str | None = None
    """Set when the task cannot run at all (its key or its items failed)."""
    stage: int = 0
    """Index of its stage in the run's `Plan` (driver side)."""
    hands_off: bool = False
    """Other stages consume its result: the worker returns it in a `Handoff`."""
    prior: Any = None
    """A skipped task's result, read back from the run that did it (when ``hands_off``)."""
    blocked: str | None = None
    """Set when an upstream task did not succeed: the task is recorded ``upstream_failed``."""
    upstream_stage: str | None = None
    """The name of the stage whose results this task consumes."""
    upstream_id: int | None = None
    """The upstream task (a chain), or the first upstream task that failed (a fan-in)."""
    whole_stage: bool = False
    """The task stands for its stage's item source, not for an item (the source raised)."""
    fingerprint: str | None = None
    """A cached task's fingerprint, recorded on its row (`pipeloom.pipeline._cache`)."""
    cached: CacheHit | None = None
    """Set when an earlier run's done task stands for this one: it is not run."""


@dataclass(frozen=True, slots=True)
class Handoff:
    """A done task's return value, handed back to the driver for the stages that consume it."""

    value: Any


@dataclass(slots=True)
class _Node:
    """What a run knows of one stage: its edges, and how far its tasks have got."""

    stage: Stage
    ups: list[int] = field(default_factory=list)
    chains: list[int] = field(default_factory=list)
    """Stages that run one task per task of this one."""
    gathers: list[int] = field(default_factory=list)
    """Fan-ins that wait for every task of this one."""
    created: int = 0
    completed: int = 0
    closed: bool = False
    """No more tasks of this stage will be made."""
    fresh: bool = False
    """Some task of this stage ran in this run (was not skipped as done before)."""
    failed: int = 0
    first_failed: int | None = None
    values: dict[int, Any] = field(default_factory=dict)
    """task id -> result, kept only for a stage that feeds a fan-in."""


@dataclass(slots=True)
class Plan:
    """The stages of a pipeline with their edges resolved and checked."""

    nodes: list[_Node]

    @property
    def consumed(self) -> bool:
        """Some stage consumes another's results (else no completion makes new tasks)."""
        return any(node.stage.upstream is not None for node in self.nodes)

    def total(self) -> int | None:
        """Tasks the run will make, when every source has a length (else None)."""
        counts: list[int] = []
        for node in self.nodes:  # upstream stages come first (checked in plan_stages)
            stage = node.stage
            if stage.upstream is None:
                if not isinstance(stage.items, Sized):
                    return None
                counts.append(len(stage.items))
            elif stage.fan_in:
                counts.append(1)
            else:
                counts.append(sum(counts[u] for u in node.ups))
        return sum(counts)


def plan_stages(name: str, stages: list[Stage]) -> Plan:
    """Resolve what each stage consumes and check the graph, before anything runs.

    Stages are put in an order where every stage comes after the ones it consumes.

    Raises:
        PipelineError: a stage consumes a task that is never mapped, or stages consume each
            other in a cycle.
    """
    where = f"pipeline {name!r}"
    ups: dict[int, list[int]] = {}
    for i, stage in enumerate(stages):
        ref = stage.upstream
        if ref is None:
            ups[i] = []
            continue
        if isinstance(ref, Stage):
            found = [j for j, s in enumerate(stages) if s is ref]
        else:
            found = [j for j, s in enumerate(stages) if s.task is ref]
        if not found:
            ref_name = ref.task.name if isinstance(ref, Stage) else ref.name
            raise PipelineError(
                f"{where}: {stage.task.name} consumes {ref_name}, which is never mapped in "
                f"this pipeline; add pipe.map({ref_name}, items) (or consume a task that is)"
            )
        ups[i] = found
    order = _order(where, stages, ups)
    position = {old: new for new, old in enumerate(order)}
    nodes = [_Node(stages[i], ups=[position[u] for u in ups[i]]) for i in order]
    for i, node in enumerate(nodes):
        for u in node.ups:
            (nodes[u].gathers if node.stage.fan_in else nodes[u].chains).append(i)
    return Plan(nodes)


def _order(where: str, stages: list[Stage], ups: dict[int, list[int]]) -> list[int]:
    """Stages in an order that puts each after what it consumes (map order otherwise)."""
    order: list[int] = []
    state: dict[int, int] = {}  # 1: on the current path, 2: placed

    def visit(i: int, path: list[int]) -> None:
        if state.get(i) == 2:
            return
        if state.get(i) == 1:
            cycle = [*path[path.index(i) :], i]
            names = " -> ".join(stages[j].task.name for j in cycle)
            raise PipelineError(
                f"{where}: stages consume each other in a cycle ({names}); a stage can only "
                "consume stages that do not depend on it"
            )
        state[i] = 1
        for u in ups[i]:
            visit(u, [*path, i])
        state[i] = 2
        order.append(i)

    for i in range(len(stages)):
        visit(i, [])
    return order


class Flow:
    """One run's tasks: the source generator, and the follow-ups each completion makes ready.

    Only counters live per stage (and, for a stage that feeds a fan-in, its results), so a
    chain of a million items holds a handful of tasks at a time, whatever its length.
    """

    def __init__(
        self,
        name: str,
        plan: Plan,
        previous: Previous | None,
        rerun: Rerun | None = None,
        cache: Cache | None = None,
    ) -> None:
        """Start a run's bookkeeping; ids count from 1 across every stage.

        ``rerun`` names tasks that run although ``previous`` finished them
        (`pipeloom.pipeline._rerun`).
        """
        self.name = name
        self.nodes = plan.nodes
        self.previous = previous
        self.rerun = rerun
        self.cache = cache
        self.ids = itertools.count(1)
        self.lock = threading.Lock()

    # -- the source -------------------------------------------------------------------

    def tasks(self) -> Iterator[TaskDef]:
        """Every source stage's items as tasks, in map order; read as the engine takes them."""
        for index, node in enumerate(self.nodes):
            stage = node.stage
            if stage.upstream is not None:
                continue
            spec = stage.task
            items = iter(stage.items or ())
            while True:
                try:
                    item = next(items)
                except StopIteration:
                    break
                except Exception as exc:
                    # A failing item source becomes a failed task, not a dead worker thread.
                    reason = exc_summary(exc)
                    log.error("pipeline %s: items of %s raised %s", self.name, spec.name, reason)
                    problem = f"reading the items of {spec.name} failed\n" + exc_text(exc)
                    with self.lock:
                        failed = self._make(index, problem=problem, whole_stage=True)
                    yield failed
                    break
                with self.lock:  # never held across a yield: completions take it too
                    made = self._source_task(index, item)
                yield made
            with self.lock:
                node.closed = True
                ready = self._cascade(index) if self._complete(node) else []
            yield from ready

    def _source_task(self, index: int, item: Any) -> TaskDef:
        stage = self.nodes[index].stage
        try:
            key = f"{stage.task.name}:{item_key(item, stage.key)}"
        except Exception as exc:
            return self._make(index, item=item, problem=exc_text(exc))
        return self._make(index, item=item, key=key, may_skip=True)

    # -- completions (executor threads) -------------------------------------------------

    def follow_up(self, task: Any, returned: Any) -> list[TaskDef]:
        """The engine's hook: record how ``task`` ended and make the tasks that were waiting.

        A task that consumes this one's result is made at once (chain); a fan-in once its
        upstream stages have completed every task.
        """
        job = getattr(task, "payload", None)
        if not isinstance(job, Job):
            return []
        if job.done_in is not None and job.blocked is None and job.problem is None:
            ok, value = True, job.prior  # skipped: done in an earlier run
        elif job.cached is not None:
            ok, value = True, job.cached.value  # taken from an earlier run's done task
        elif isinstance(returned, Handoff):
            ok, value = True, returned.value
        else:
            ok, value = False, None
        if not job.hands_off:
            return []  # nothing consumes this stage, so nothing waits for its tasks
        task_id: int = task.task_id
        with self.lock:
            node = self.nodes[job.stage]
            node.completed += 1
            if job.done_in is None:
                node.fresh = True
            if not ok:
                node.failed += 1
                if node.first_failed is None:
                    node.first_failed = task_id
            elif node.gathers:
                node.values[task_id] = value
            ready: list[TaskDef] = []
            if not job.whole_stage:
                for d in node.chains:
                    ready.append(self._chained(d, task, job, ok, value))
            if self._complete(node):
                ready.extend(self._cascade(job.stage))
            return ready

    def _chained(self, index: int, task: TaskDef, job: Job, ok: bool, value: Any) -> TaskDef:
        up = self.nodes[job.stage].stage.task.name
        spec = self.nodes[index].stage.task
        key = None
        if task.key is not None:
            key = f"{spec.name}:{task.key.split(':', 1)[1]}"
        if not ok:
            what = task.key or task.name
            blocked = f"upstream_failed: {what} (task {task.task_id}) did not succeed"
            return self._make(index, key=key, blocked=blocked, up=(up, task.task_id))
        return self._make(
            index, item=value, key=key, up=(up, task.task_id), may_skip=job.done_in is not None
        )

    @staticmethod
    def _complete(node: _Node) -> bool:
        return node.closed and node.completed == node.created

    def _cascade(self, index: int) -> list[TaskDef]:
        """Stage ``index`` has completed: close the stages it feeds, make ready fan-ins."""
        ready: list[TaskDef] = []
        node = self.nodes[index]
        for d in node.chains:
            down = self.nodes[d]
            if not down.closed and all(self._complete(self.nodes[u]) for u in down.ups):
                down.closed = True
                if self._complete(down):
                    ready.extend(self._cascade(d))
        for g in node.gathers:
            gather = self.nodes[g]
            if not gather.closed and all(self._complete(self.nodes[u]) for u in gather.ups):
                gather.closed = True
                ready.append(self._fan_in(g))
        return ready

    def _fan_in(self, index: int) -> TaskDef:
        node = self.nodes[index]
        spec = node.stage.task
        ups = [self.nodes[u] for u in node.ups]
        names = "+".join(u.stage.task.name for u in ups)
        key = f"{spec.name}:all {names}"
        failed = sum(u.failed for u in ups)
        if failed:
            first = next(u.first_failed for u in ups if u.first_failed is not None)
            blocked = (
                f"upstream_failed: {failed} task(s) of {names} did not succeed "
                f"(the first: task {first})"
            )
            return self._make(index, key=key, blocked=blocked, up=(names, first))
        values: list[Any] = []
        for u in ups:
            values.extend(u.values[i] for i in sorted(u.values))
            u.values = {}
        fresh = any(u.fresh for u in ups)
        return self._make(index, item=values, key=key, up=(names, None), may_skip=not fresh)

    # -- making one task ---------------------------------------------------------------

    def _make(
        self,
        index: int,
        *,
        item: Any = None,
        key: str | None = None,
        problem: str | None = None,
        blocked: str | None = None,
        up: tuple[str, int | None] | None = None,
        may_skip: bool = False,
        whole_stage: bool = False,
    ) -> TaskDef:
        """One task of stage ``index`` (called with the lock held)."""
        node = self.nodes[index]
        node.created += 1
        spec = node.stage.task
        task_id = next(self.ids)
        hands_off = bool(node.chains or node.gathers)
        done_in = prior = None
        rerun = self.rerun is not None and key is not None and self.rerun.matches(spec.name, key)
        if may_skip and key is not None and self.previous is not None and not rerun:
            done_in = self.previous.done_in(key)
            if done_in is not None and hands_off:
                readable, prior = self.previous.result_of(key, done_in)
                if not readable:
                    log.warning(
                        "resume: %s was done in run %d but its result cannot be read back "
                        "(stored as repr, or cut); running it again for the tasks it feeds",
                        key,
                        done_in,
                    )
                    done_in = None
        fingerprint = cached = None
        runs = done_in is None and blocked is None and problem is None
        if spec.cache and self.cache is not None and key is not None and runs:
            fingerprint, cached = self.cache.decide(spec, key, item, readable=hands_off)
        if whole_stage:
            name = f"{spec.name}: items"
        elif key is None:
            name = f"{spec.name}:#{task_id}"
        else:
            name = label(key)
        job = Job(
            spec,
            item,
            done_in,
            problem,
            stage=index,
            hands_off=hands_off,
            prior=prior,
            blocked=blocked,
            upstream_stage=up[0] if up else None,
            upstream_id=up[1] if up else None,
            whole_stage=whole_stage,
            fingerprint=fingerprint,
            cached=cached,
        )
        return TaskDef(task_id, name, payload=job, key=key)


class _SizedTasks:
    """The run's source tasks, with a length (every task of every stage) when it is known."""

    def __init__(self, gen: Callable[[], Iterator[TaskDef]], total: int) -> None:
        self._gen = gen
        self._total = total

    def __len__(self) -> int:
        return self._total

    def __iter__(self) -> Iterator[TaskDef]:
        return self._gen()


def task_stream(flow: Flow, plan: Plan) -> Iterable[TaskDef]:
    """The run's source tasks, sized when every item collection has a length."""
    total = plan.total()
    if total is None:
        return flow.tasks()
    return _SizedTasks(flow.tasks, total)
