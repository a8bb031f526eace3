"""Running a pipeline: from its mapped stages to one `run_pipeline` call, and back.

`Pipeline.run` checks and plans the stages, then everything a run needs is put together here:
the limits and what each task uses, the parameters' values, the run to resume (with what a rerun
selects again), the cache, the declarative worker (`Runner`) and the task stream, then the
engine runs it all and the result gains the pipeline's own counts.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from pipeloom.alerts import Alerts
from pipeloom.engine import RunResult, run_pipeline
from pipeloom.errors import PipelineError
from pipeloom.executors import Executor
from pipeloom.limits import Limit
from pipeloom.options import RunOptions
from pipeloom.params import param_changes
from pipeloom.params import resolve as resolve_params
from pipeloom.params import to_json as params_json
from pipeloom.pipeline._cache import Cache, MsgCacheNote, apply_cache_notes
from pipeloom.pipeline._rerun import select as select_rerun
from pipeloom.pipeline._resume import open_previous
from pipeloom.pipeline._runner import Runner
from pipeloom.pipeline._tasks import Flow, Job, Stage, plan_stages, task_stream
from pipeloom.state import MsgStateSet, apply_state_sets, read_state

if TYPE_CHECKING:
    from pipeloom.pipeline import Pipeline

__all__ = ["run_stages", "uses_for"]

log = logging.getLogger("pipeloom.pipeline")


def run_stages(
    pipe: Pipeline,
    stages: list[Stage],
    *,
    db: str | Path | None,
    workers: int | None,
    resume: bool | int | str,
    progress: bool | None,
    summary_hint: str | None,
    console: Console | None,
    executor: str | Executor | None,
    options: RunOptions | None,
    wait_for_live: bool | float,
    params: Mapping[str, Any] | None,
    allow_param_change: bool,
    rerun: Sequence[str],
    rerun_from: str | None,
    refresh: bool,
) -> RunResult:
    """Run ``pipe``'s mapped ``stages`` once; the arguments are `Pipeline.run`'s.

    Raises:
        PipelineError, DatabaseError: as `Pipeline.run` says.
    """
    if not stages:
        raise PipelineError(
            f"pipeline {pipe.name!r} has no work: call pipe.map(task, items) before run()"
        )
    plan = plan_stages(pipe.name, stages)  # unknown tasks, cycles: before anything
    uses = uses_for(pipe.name, stages, pipe.limits)  # an undeclared resource: before anything
    for stage in stages:
        if stage.items is not None and stage.used and iter(stage.items) is stage.items:
            log.warning(
                "pipeline %s: the items of %s are an iterator an earlier run already read, "
                "so they may yield nothing now; pass a list, or call pipe.map() again",
                pipe.name,
                stage.task.name,
            )
        stage.used = True
    values = resolve_params(pipe.name, pipe.params, params)
    stored_values = params_json(values)
    db_path = pipe.db if db is None else db
    state = read_state(db_path, pipe.name)
    if isinstance(rerun, str):
        rerun = [rerun]
    asked_rerun = bool(rerun) or rerun_from is not None
    if asked_rerun and resume is False:
        resume = True  # a rerun resumes the latest run
    previous = open_previous(db_path, pipe.name, resume, wait_for_live)
    request: dict[str, Any] = {}
    selection = None
    try:
        if asked_rerun:
            if previous is None:
                raise PipelineError(
                    f"pipeline {pipe.name!r}: nothing to rerun, {db_path} holds no earlier "
                    "run of it; run it without rerun first"
                )
            selection = select_rerun(
                pipe.name,
                [stage.task.name for stage in stages],
                list(rerun),
                rerun_from,
                previous.conn,
                previous.run_id,
            )
            request.update(selection.request(list(rerun), rerun_from))
        changed = [] if previous is None else param_changes(previous, stored_values)
    except BaseException:
        if previous is not None:
            previous.close()
        raise
    if changed and previous is not None:
        if not allow_param_change:
            previous.close()
            raise PipelineError(
                f"pipeline {pipe.name!r}: run {previous.run_id} was made with other "
                f"parameters ({'; '.join(changed)}); resuming would mix results of both, "
                "so it is refused: run without resume, or pass allow_param_change=True "
                "(--allow-param-change) to resume anyway"
            )
        request["param_changes"] = changed
    run_params: dict[str, Any] = dict(stored_values)
    if previous is not None:
        run_params["resumed_from"] = previous.run_id
    runner = Runner(pipe, pipe.fail_fast, values, state)
    cache = None
    if any(task.cache for task in pipe.tasks.values()):
        try:
            cache = Cache.open(db_path, pipe.name)
        except BaseException:
            if previous is not None:
                previous.close()
            raise
        cache.lookup = not refresh
        if refresh:
            request["refresh"] = True
    flow = Flow(pipe.name, plan, previous, selection, cache)
    source = task_stream(flow, plan)
    follow_up: Callable[[Any, Any], Iterable[Any]] | None = (
        flow.follow_up if plan.consumed else None
    )
    try:
        result = run_pipeline(
            source,
            db_path,
            worker_fn=runner,
            workers=workers if workers is not None else pipe.workers,
            handlers={
                **pipe.handlers,
                MsgStateSet: apply_state_sets,
                MsgCacheNote: apply_cache_notes,
            },
            schema=pipe.schema,
            fail_fast=pipe.fail_fast,
            progress=progress,
            console=console,
            run_name=pipe.name,
            params=run_params,
            request=request,
            # Cached tasks are done without running: the bar and summary say how many.
            extra_counts=(lambda: {"cached": cache.hits}) if cache is not None else None,
            summary_hint=summary_hint,
            executor=executor if executor is not None else pipe.executor,
            follow_up=follow_up,
            limits=uses[0] if uses is not None else None,
            uses=uses[1] if uses is not None else None,
            options=_with_alerts(options or pipe.options, pipe.alerts),
        )
    finally:
        if previous is not None:
            previous.close()
        if cache is not None:
            cache.close()
    still_running = runner.wait_for_abandoned(pipe.grace)
    extra = {
        "cached": cache.hits if cache is not None else 0,
        "resumed_from": previous.run_id if previous is not None else None,
        "abandoned_threads": still_running,
    }
    return dataclasses.replace(result, extra={**result.extra, **extra})


def uses_for(
    name: str, stages: list[Stage], limits: dict[str, Limit]
) -> tuple[dict[str, Limit], Callable[[Any], tuple[str, ...]]] | None:
    """The run's limits and what each task holds, when a task uses a resource.

    `run_pipeline` puts them in its admission gate (`pipeloom.limits`).

    Raises:
        PipelineError: a task uses a resource no ``pipe.limit()`` declares.
    """
    used = {name for stage in stages for name in stage.task.uses}
    if not used:
        return None
    limits = dict(limits)
    for stage in stages:  # a task's own rate (@pipe.task(rate=...))
        if stage.task.rate is not None:
            limits[stage.task.rate.name] = stage.task.rate
    unknown = sorted(used - set(limits))
    if unknown:
        raise PipelineError(
            f"pipeline {name!r}: tasks use {', '.join(map(repr, unknown))} but no "
            f"pipe.limit() declares it; add pipe.limit({unknown[0]!r}, 2) or drop the uses="
        )

    def uses_of(task: Any) -> tuple[str, ...]:
        job = getattr(task, "payload", None)
        if not isinstance(job, Job) or job.done_in is not None or job.problem is not None:
            return ()  # skipped or failed before it runs: it uses nothing
        return job.task.uses

    return limits, uses_of


def _with_alerts(options: RunOptions, alerts: Alerts) -> RunOptions:
    """The run's options with the pipeline's hooks added to any it already has."""
    if not alerts.active:
        return options
    return dataclasses.replace(options, alerts=alerts.merged(options.alerts))
