"""Running tasks on a Dask distributed cluster, beyond one machine.

Needs the optional extra: ``uv add 'pipeloom-core[dask]'``. Tasks travel to the cluster in
chunks (one Dask future runs several tasks one after another, sized so a chunk takes about
`TARGET_CHUNK_SECONDS`), because a future costs milliseconds of scheduler round trip while a
tiny task costs microseconds. Only the driver writes SQLite: a task's messages, its log
records and its completion come back in batches on distributed's event stream
(``Worker.log_event`` on the worker, ``Client.subscribe_topic`` here, one topic per run), in
the order the worker produced them, and one dispatcher thread here applies them.

Dask may run a task twice: when a worker dies, the scheduler runs its chunk again elsewhere.
Every execution of a chunk carries a token of its own, so the driver tells a rerun from the
first run, records the lost execution as a failed attempt (a ``task_attempts`` row) and counts
the rerun as the next attempt; a task that already completed is never recorded again.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
import pickle
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeloom._text import exc_summary
from pipeloom.errors import DaskUnavailableError, ExecutorFailedError, WriterFailedError
from pipeloom.executors._base import Completions, Executor, Sink, Withdrawal, WorkerFn
from pipeloom.executors._dask_chunk import run_chunk, stop_run
from pipeloom.executors._remote import (
    Outcome,
    RemoteTaskError,
    Unsent,
    crossing_text,
    dumps_by_value,
    settle,
    task_what,
    unpack,
    unpack_outcome,
)
from pipeloom.executors._shipping import file_modules
from pipeloom.limits import NOT_RUN
from pipeloom.messages import MsgTaskAttempt, MsgTaskFinished, MsgTaskStarted, utc_now

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["DaskExecutor", "DaskUnavailableError"]

log = logging.getLogger("pipeloom.executors.dask")

TARGET_CHUNK_SECONDS = 0.2
"""About how long one chunk should run: long enough to hide a future's round trip."""
MAX_CHUNK = 1000
"""Most tasks in one chunk."""
QUEUED_PER_THREAD = 2
"""Chunks handed to the cluster per worker thread: one running, one waiting behind it."""
_DEFAULT_IN_FLIGHT = 4096
"""Tasks the engine may hand over at once; the executor sizes chunks out of them."""
_REFRESH = 5.0
"""Seconds between looks at how many threads the cluster has (it may scale)."""
_POLL = 0.05
"""Longest the dispatcher sleeps while it has work, so a stop is noticed promptly."""
_OWN_LOGGERS = ("distributed", "tornado", "asyncio", "bokeh")
_SCHEDULER_LOST = "scheduler-connection-lost"
"""The reason distributed gives the futures it cancels when the client loses its scheduler."""
_CLIENT_DOWN = ("connecting", "closing", "closed")
"""``Client.status`` values once the scheduler connection is gone."""
"""Loggers whose level stays the worker's own: they are the cluster's, not the tasks'."""


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise DaskUnavailableError(
            "the dask executor needs the optional extra: uv add 'pipeloom-core[dask]' "
            f"(or pip install 'pipeloom-core[dask]'); importing distributed failed: {exc}"
        ) from exc
    return distributed


@dataclass(slots=True)
class _Task:
    """What the driver knows of one task handed to the cluster."""

    task: Any
    chunk: int = -1
    token: str | None = None
    """The execution whose messages count (the latest to begin the task)."""
    offset: int = 0
    """Attempts used by executions that were lost; added to what the worker reports."""
    attempt: int = 0
    """Highest attempt seen so far."""
    started_at: str | None = None
    finish: MsgTaskFinished | None = None
    """Its own terminal message (from the execution that counts), held until it ends."""
    lost: str | None = None
    """Why a message it sent never arrived (it could not cross)."""


@dataclass(slots=True)
class _Chunk:
    future: Any
    """The chunk's ``distributed.Future`` (typed loosely: distributed is partly untyped)."""
    ids: list[int]


_WAKE = object()
_STOP = object()


class DaskExecutor(Executor):
    """Runs tasks on a Dask distributed cluster; only the driver writes SQLite.

    Args:
        address: a running scheduler (``tcp://host:8786``); the cluster is left running.
        client: an existing ``distributed.Client``; left open and its cluster running.
        chunk_size: fixed tasks per future; None (default) sizes chunks from how long tasks
            take, so a chunk runs about `TARGET_CHUNK_SECONDS`.
        **cluster_kwargs: with neither ``address`` nor ``client``, passed to the
            ``LocalCluster`` started for the run (and closed after it), e.g. ``n_workers=4``.

    ``worker_fn``, the tasks and the messages they send must pickle; the workers need
    pipeloom and the code the worker function imports installed. A task, message or result
    that cannot cross is that task's ``error``. Dask may run a task twice (after a worker
    dies); every execution is recorded as an attempt.
    """

    name = "dask"

    def __init__(
        self,
        address: str | None = None,
        client: Client | None = None,
        *,
        chunk_size: int | None = None,
        **cluster_kwargs: Any,
    ) -> None:
        """Check the extra is installed; connect only in `start`."""
        _import_distributed()
        if address is not None and client is not None:
            raise ValueError("DaskExecutor: pass address= or client=, not both")
        if (address is not None or client is not None) and cluster_kwargs:
            raise ValueError(
                f"DaskExecutor: {', '.join(sorted(cluster_kwargs))} configure a LocalCluster, "
                "which is only started when neither address= nor client= is given"
            )
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"DaskExecutor(chunk_size={chunk_size}): use 1 or more, or None")
        self.address = address
        self.chunk_size = chunk_size
        self.cluster_kwargs = cluster_kwargs
        self.client: Any = client
        self._own_client = client is None
        self._cluster: Any = None
        self._thread: threading.Thread | None = None

    def default_workers(self, tasks: int | None, cpus: int) -> int:
        """Tasks in flight by default: enough to fill chunks for a whole cluster."""
        return max(1, min(tasks, _DEFAULT_IN_FLIGHT)) if tasks is not None else _DEFAULT_IN_FLIGHT

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, workers: int, worker_fn: WorkerFn, sink: Sink, engine: Completions) -> None:
        """Connect (or start a LocalCluster), check the worker function pickles, subscribe."""
        super().start(workers, worker_fn, sink, engine)
        # Per run: an instance may serve several runs, and workers cache the function by topic.
        self._topic = f"pipeloom-{uuid.uuid4().hex}"
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._cancelled = False
        self._closing = False
        self._stop_sent = False
        self._scheduler_gone = False
        try:
            self._fn_bytes = dumps_by_value(worker_fn)
            self._preload = file_modules()
        except Exception as exc:
            raise TypeError(
                f"DaskExecutor: the worker function {worker_fn!r} cannot be sent to Dask "
                f"workers ({exc_summary(exc)}); define it at module level and keep locks, "
                "open files and connections out of it"
            ) from exc
        try:
            self._connect()
        except BaseException:
            # The engine calls shutdown only after a successful start: close what was made.
            self.shutdown(None)
            raise
        self._levels = _driver_levels()
        self._tasks: dict[int, _Task] = {}
        self._chunks: dict[int, _Chunk] = {}
        self._pending: list[int] = []
        self._chunk_ids = itertools.count()
        self._cursor: dict[str, int | None] = {}
        self._seconds: float | None = None
        self._threads = self._cluster_threads()
        self._looked = time.monotonic()
        self.client.subscribe_topic(self._topic, self._on_event)
        self._thread = threading.Thread(
            target=self._dispatch_loop, name="pipeloom-dask-dispatch", daemon=True
        )
        self._thread.start()

    def _connect(self) -> None:
        distributed = _import_distributed()
        if self.client is not None:
            return
        if self.address is not None:
            self.client = distributed.Client(self.address)
            return
        kwargs = {"dashboard_address": ":0", **self.cluster_kwargs}
        self._cluster = distributed.LocalCluster(**kwargs)
        self.client = distributed.Client(self._cluster)
        from pipeloom.executors._dask_worker import DieWithDriver, IgnoreInterrupts

        self.client.register_plugin(IgnoreInterrupts(), name="pipeloom-no-sigint")
        self.client.register_plugin(DieWithDriver(os.getpid()), name="pipeloom-die-with-driver")

    def _cluster_threads(self) -> int:
        assert self.client is not None
        threads: dict[str, int] = self.client.nthreads()
        return max(1, sum(threads.values()))

    def submit(self, task_id: int, task: Any) -> None:
        """Queue the task for the dispatcher, which groups tasks into chunks."""
        self._inbox.put(("t", task_id, task))

    def withdraw_unbegun(self) -> list[int]:
        """Take back every task not yet begun: not sent, or waiting in a chunk (`Executor`).

        The dispatcher does it, as it owns the tasks; a chunk that begins one of them later
        is ignored (what it sends is dropped), and `cancel` stops the chunks.
        """
        thread = self._thread
        if thread is None or not thread.is_alive():
            return []
        request = Withdrawal()
        self._inbox.put(("w", request))
        return request.answer("the Dask dispatcher")

    def cancel(self) -> None:
        """Cancel every chunk handed to the cluster (Ctrl-C twice, an abandoned run).

        Done here rather than by the dispatcher, which `shutdown` may stop first. Running
        chunks stop before their next task; a task already running runs on to its end (Dask
        cannot stop a thread).
        """
        self._cancelled = True
        self._inbox.put(_WAKE)
        # A snapshot: list() of a dict's values runs in C, so the dispatcher cannot change
        # the dict under it.
        futures = [c.future for c in list(self._chunks.values())]
        if futures and self.client is not None:
            try:
                self.client.cancel(futures)
            except Exception as exc:  # the scheduler is gone: nothing is left to cancel
                log.warning("could not cancel the run's Dask futures: %s", exc)

    def shutdown(self, timeout: float | None) -> bool:
        """Stop the dispatcher, unsubscribe; close the client and cluster this executor made.

        An abandoned run passes a zero timeout: the dispatcher may still be busy, but a
        cluster this executor started is closed all the same.
        """
        self._closing = True
        alive = False
        if self._thread is not None:
            self._inbox.put(_STOP)
            self._thread.join(timeout)
            alive = self._thread.is_alive()
            if not alive:
                self._thread = None
        client = self.client
        if client is None:
            return not alive
        try:
            client.unsubscribe_topic(self._topic)
        except Exception as exc:  # never subscribed (a failed start) or already closed
            log.debug("unsubscribing %s: %s", self._topic, exc)
        if self._own_client:
            self.client = None
            client.close()
            if self._cluster is not None:
                self._cluster.close()
                self._cluster = None
        return not alive

    # -- callbacks from distributed's event loop: hand over, never block ----------------

    def _on_event(self, event: tuple[float, bytes]) -> None:
        self._inbox.put(("ev", event[1]))

    def _on_future(self, chunk_id: int) -> Callable[[Any], None]:
        def done(_: Any) -> None:
            self._inbox.put(("f", chunk_id))

        return done

    # -- the dispatcher: the one thread that owns the state below ------------------------

    def _dispatch_loop(self) -> None:
        try:
            self._dispatch()
        except WriterFailedError as exc:
            # The engine sees the writer's failure itself and ends the run; nothing more can
            # be stored, so stop applying what the cluster sends.
            log.warning("Dask dispatcher stops: %s", exc)
        except BaseException as exc:  # the executor cannot go on; the engine records it
            if self._closing:  # shutdown closed the client under an abandoned run
                log.debug("the Dask dispatcher ends with the run: %s", exc_summary(exc))
                return
            log.exception("the Dask dispatcher failed")
            self.engine.executor_failed(exc)

    def _dispatch(self) -> None:
        inbox = self._inbox
        stopping = self.engine.stopping
        while True:
            busy = bool(self._pending or self._chunks)
            try:
                item = inbox.get(timeout=_POLL if busy else None)
            except queue.Empty:
                item = _WAKE
            while True:
                if item is _STOP:
                    return
                if item is not _WAKE:
                    self._handle(item)
                try:
                    item = inbox.get_nowait()
                except queue.Empty:
                    break
            if self._cancelled:
                self._cancel_all()
            elif stopping.is_set():
                self._stop_pending()
            else:
                self._send_chunks()

    def _handle(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == "t":
            _, task_id, task = item
            self._tasks[task_id] = _Task(task)
            self._pending.append(task_id)
        elif kind == "w":
            never = [i for i, st in self._tasks.items() if st.token is None]
            for i in never:
                del self._tasks[i]
            self._pending = []
            item[1].give(never)
        elif kind == "ev":
            try:
                token, items = pickle.loads(item[1])
            except Exception as exc:  # a class the driver cannot import, say
                log.error(
                    "a batch of task messages from the Dask cluster could not be read (%s); "
                    "its tasks are recorded from their chunk's result",
                    exc_summary(exc),
                )
                return
            self._apply(token, items)
        elif kind == "f":
            self._future_done(item[1])

    # -- sending chunks -----------------------------------------------------------------

    def _chunk_len(self, free: int) -> int:
        if self.chunk_size is not None:
            size = self.chunk_size
        elif self._seconds is None:
            size = 1  # nothing measured yet: keep long tasks spread over the cluster
        else:
            size = int(TARGET_CHUNK_SECONDS / max(self._seconds, 1e-6))
        # Never put everything left in one chunk while other threads would idle.
        spread = math.ceil(len(self._pending) / max(1, free))
        return max(1, min(size, MAX_CHUNK, spread))

    def _send_chunks(self) -> None:
        now = time.monotonic()
        if now - self._looked > _REFRESH:
            self._looked = now
            self._threads = self._cluster_threads()
        limit = self._threads * QUEUED_PER_THREAD
        while self._pending and len(self._chunks) < limit:
            n = self._chunk_len(limit - len(self._chunks))
            ids, self._pending = self._pending[:n], self._pending[n:]
            self._send(ids)

    def _send(self, ids: list[int]) -> None:
        assert self.client is not None
        pairs: list[tuple[int, bytes]] = []
        for i in ids:
            try:  # one pickle per task: one that cannot be sent is its own error
                pairs.append((i, dumps_by_value(self._tasks[i].task)))
            except Exception as exc:
                what = task_what(self._tasks[i].task, dumps_by_value)
                text = crossing_text(i, what, "pickled for the Dask workers", exc)
                self._complete(i, RemoteTaskError(text, None), False)
        if not pairs:
            return
        ids = [i for i, _ in pairs]
        payload = pickle.dumps(pairs, protocol=pickle.HIGHEST_PROTOCOL)
        chunk_id = next(self._chunk_ids)
        future = self.client.submit(
            run_chunk,
            self._topic,
            self._fn_bytes,
            self._preload,
            payload,
            self._levels,
            key=f"{self._topic}-{chunk_id}",
            pure=False,
        )
        self._chunks[chunk_id] = _Chunk(future, ids)
        for i in ids:
            self._tasks[i].chunk = chunk_id
        future.add_done_callback(self._on_future(chunk_id))

    # -- what comes back ----------------------------------------------------------------

    def _apply(self, token: str, frames: list[Any]) -> None:
        cursor = self._cursor.get(token)
        for frame in frames:
            kind = frame[0]
            if kind == "p":
                self._apply_run(token, cursor, unpack(frame[1], cursor))
            elif kind == "b":
                cursor = self._begin(token, frame[1])
            elif kind == "e":
                if cursor is not None:
                    self._end(token, cursor, unpack_outcome(cursor, frame[1]), frame[2])
                cursor = None
            elif kind == "s":
                self._skipped(frame[1])
        if cursor is None:
            self._cursor.pop(token, None)
        else:
            self._cursor[token] = cursor

    def _apply_run(self, token: str, cursor: int | None, items: Any) -> None:
        """Put one task's run of messages on the sink, holding back its own finish."""
        if isinstance(items, Unsent):
            self._lost(token, cursor, items.reason)
            return
        put = self.sink.put
        for item in items:
            if type(item) is Unsent:
                self._lost(token, cursor, item.reason)
                continue
            if type(item) is tuple and item and item[0] == "l":
                _emit(item[1])
                continue
            if cursor is None:
                log.debug("dropped %s from a superseded execution", type(item).__name__)
                continue
            st = self._tasks.get(cursor)
            if st is None or st.token != token:
                continue
            item = self._renumber(st, item)
            if type(item) is MsgTaskFinished and item.task_id == cursor and st.finish is None:
                st.finish = item  # until its end: a result that cannot cross makes it error
            else:
                put(item)

    def _begin(self, token: str, task_id: int) -> int | None:
        st = self._tasks.get(task_id)
        if st is None:
            # Completed already (or never ours): Dask ran it again after a lost worker.
            log.info("task %s: an execution began after it was recorded; ignored", task_id)
            return None
        if st.token is not None and st.token != token:
            lost = max(st.attempt, st.offset + 1)
            self.sink.put(
                MsgTaskAttempt(
                    task_id,
                    lost,
                    "error",
                    "the Dask worker running this attempt was lost; Dask ran the task again "
                    f"(attempt {lost + 1})",
                    started_at=st.started_at,
                )
            )
            st.offset = st.attempt = lost
            st.started_at = st.lost = st.finish = None
        st.token = token
        return task_id

    def _renumber(self, st: _Task, msg: Any) -> Any:
        cls = type(msg)
        if cls is MsgTaskStarted or cls is MsgTaskFinished or cls is MsgTaskAttempt:
            attempt = msg.attempt + st.offset
            if st.offset:
                msg = dataclasses.replace(msg, attempt=attempt)
            st.attempt = max(st.attempt, attempt)
            if cls is MsgTaskStarted:
                st.started_at = msg.started_at
        return msg

    def _lost(self, token: str, task_id: int | None, why: str) -> None:
        st = self._tasks.get(task_id) if task_id is not None else None
        if st is None or st.token != token:
            log.error("a message from the Dask cluster was lost: %s", why)
            return
        log.error("%s; the message was not stored", why)
        st.lost = st.lost or why

    def _end(self, token: str, task_id: int | None, outcome: Outcome, seconds: float) -> None:
        if task_id is None:
            return
        st = self._tasks.get(task_id)
        if st is None or st.token != token:
            return
        self._seconds = seconds if self._seconds is None else 0.8 * self._seconds + 0.2 * seconds
        self._settle(task_id, st, outcome)

    def _settle(self, task_id: int, st: _Task, outcome: Outcome) -> None:
        # What reached the driver decides, not what the worker believes it sent.
        finish, error, returned = settle(outcome, st.finish, st.lost)
        if finish is not None:
            self.sink.put(finish)
        self._complete(task_id, error, finish is not None, returned)

    def _complete(
        self, task_id: int, error: BaseException | None, finished: bool, returned: Any = None
    ) -> None:
        st = self._tasks.pop(task_id, None)
        if st is not None:
            self.engine.task_done(task_id, st.task, error, finished, returned)

    def _future_done(self, chunk_id: int) -> None:
        chunk = self._chunks.pop(chunk_id, None)
        if chunk is None:
            return
        left = [i for i in chunk.ids if i in self._tasks]
        if not left:
            return
        future = chunk.future
        status = future.status
        if status == "finished":
            self._chunk_returned(chunk_id, left, future.result())
        elif status == "cancelled" and self._cancelled:
            return  # cancel(): the engine abandoned what was in flight
        else:
            try:
                exc = future.exception(timeout=5)
            except Exception as err:  # the client lost the scheduler
                exc = err
            if self._cluster_lost(exc):
                return  # the engine abandons what was in flight: ``interrupted``
            why = exc_summary(exc) if exc else status
            if isinstance(exc, ImportError):
                why += (
                    " (every Dask worker must be able to import the code your tasks use: "
                    "install it there, or run the same file path on each machine)"
                )
            error = RemoteTaskError(f"its Dask chunk failed: {why}", None)
            for i in left:
                self._complete(i, error, False)

    def _chunk_returned(
        self, chunk_id: int, left: list[int], outcomes: list[tuple[int, bytes]]
    ) -> None:
        """A safety net: the stream delivers every task's end before its chunk's result."""
        log.warning("chunk %s returned before %d task end(s) arrived", chunk_id, len(left))
        ran = dict(outcomes)
        for i in left:
            st = self._tasks[i]
            out = ran.get(i)
            if out is not None:
                self._settle(i, st, unpack_outcome(i, out))
            elif st.token is None:  # the chunk stopped early (a task raised KeyboardInterrupt)
                self._cancelled_task(i, "cancelled: its chunk stopped before it started")
            else:
                self._complete(
                    i, RemoteTaskError("its chunk ended without reporting it", None), False
                )

    def _cluster_lost(self, exc: BaseException | None) -> bool:
        """True (and the run told, once) when a chunk ended because the scheduler is gone.

        Not a failure of its tasks: the run cannot go on. It stops with ``cluster_lost``
        (exit code 3, not Ctrl-C's 130); what was in flight is recorded ``interrupted``.
        """
        status = getattr(self.client, "status", "running")
        if getattr(exc, "reason", None) != _SCHEDULER_LOST and status not in _CLIENT_DOWN:
            return False
        if not self._scheduler_gone:
            self._scheduler_gone = True
            scheduler = getattr(self.client, "scheduler", None)
            where = self.address or getattr(scheduler, "address", None) or "of the run"
            log.error("lost the Dask scheduler %s (client %s)", where, status)
            self.engine.executor_failed(
                ExecutorFailedError(
                    f"the Dask scheduler {where} was lost ({exc_summary(exc) if exc else status})"
                    "; tasks in flight are recorded interrupted: restart the scheduler and "
                    "rerun with --resume",
                    "cluster_lost",
                )
            )
        return True

    # -- stopping -----------------------------------------------------------------------

    def _cancelled_task(self, task_id: int, why: str) -> None:
        st = self._tasks[task_id]
        name = getattr(st.task, "name", None)
        key = getattr(st.task, "key", None)
        self.sink.put(
            MsgTaskFinished(task_id, "cancelled", utc_now(), message=why, name=name, key=key)
        )
        self._complete(task_id, None, True, NOT_RUN)  # never ran: a rate's start comes back

    def _not_begun(self, task_id: int) -> None:
        """A task the run stopped before it began: no row, counted not started.

        The same record as on threads and processes (`Completions.not_begun`): that the
        engine handed it to the cluster early is the executor's business, not the run's.
        """
        st = self._tasks.pop(task_id, None)
        if st is not None:
            self.engine.not_begun(task_id, st.task)

    def _stop_pending(self) -> None:
        """fail_fast or Ctrl-C: nothing new starts; running tasks finish.

        Tasks not yet sent are given back unbegun here. Chunks already sent are not
        cancelled (a chunk may have begun a task whose start is still on its way here, and
        its record would then be a lie): every worker is told the run stopped, and each
        chunk reports the tasks it then skips, which are given back unbegun too.
        """
        if self._chunks and not self._stop_sent and not self._scheduler_gone:
            self._stop_sent = True
            try:
                self.client.run(stop_run, self._topic)
            except Exception as exc:  # a worker gone: its chunks rerun elsewhere and stop there
                log.warning("could not tell every Dask worker the run stopped: %s", exc)
        pending, self._pending = self._pending, []
        for i in pending:
            self._not_begun(i)

    def _skipped(self, task_ids: list[int]) -> None:
        for i in task_ids:
            st = self._tasks.get(i)
            if st is not None and st.token is None:
                self._not_begun(i)

    def _cancel_all(self) -> None:
        """After `cancel`: send nothing more; the engine no longer waits for these tasks."""
        self._pending = []
        self._chunks.clear()


def _driver_levels() -> dict[str, int]:
    """The root level and every level set on a named logger here, for the workers to adopt.

    A record below a worker's level is never made, so it could not be forwarded; the worker
    lowers (never raises) the levels of the same loggers for the records the driver wants.
    """
    levels = {"": logging.getLogger().getEffectiveLevel()}
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if (
            isinstance(logger, logging.Logger)
            and logger.level != logging.NOTSET
            and not name.startswith(_OWN_LOGGERS)
        ):
            levels[name] = logger.level
    return levels


def _emit(item: dict[str, Any]) -> None:
    """Re-emit a worker's log record on the driver, under its own logger name."""
    logger = logging.getLogger(item.get("name") or "")
    if not logger.isEnabledFor(item.get("levelno", logging.INFO)):
        return
    logger.handle(logging.makeLogRecord(item))
