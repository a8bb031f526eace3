"""Processes: each task runs in one of ``workers`` child processes, for CPU-bound work.

Every child has a pipe of its own to the driver: the driver sends it a task, and one more to
wait behind it, so the child begins its next task without a round trip through the driver
(whose GIL the writer keeps busy); it sends back the task's messages (batched), its log
records and how it ended. A task waiting in a child is taken back when another child has
nothing to do, and never begun once the run stops (it counts as not started, like the tasks
the run never took). One collector
thread in the driver waits on every pipe and every child's exit at once, so a child that dies
(``os._exit``, a signal, the OOM killer) is noticed at once: its task is recorded ``error``
with the exit code or signal, and a fresh child takes its place. Children ignore Ctrl-C, SIGTERM
and SIGHUP; the driver decides (a second signal kills them), and a child whose driver died
exits at once (`_parent`). A declarative task's timeout kills its child, which threads cannot
do.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import pickle
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from pipeloom._text import exc_summary
from pipeloom.errors import ExecutorFailedError, PipeloomError
from pipeloom.executors._base import Completions, Executor, Sink, Withdrawal, WorkerFn
from pipeloom.executors._process_child import child_main
from pipeloom.executors._remote import (
    RemoteTaskError,
    Unsent,
    crossing_text,
    dumps_by_value,
    main_is_interactive,
    settle,
    task_what,
    unpack,
    unpack_outcome,
)
from pipeloom.executors._shipping import file_modules
from pipeloom.messages import PIPELOOM_MESSAGES, MsgTaskAttempt, MsgTaskFinished, utc_now

__all__ = ["ProcessExecutor"]

log = logging.getLogger("pipeloom.executors")

_POLL = 0.05
"""How often the collector looks at deadlines when nothing arrives (seconds)."""
_EXPIRE_GRACE = 0.5
"""Longest wait, after an attempt's deadline, for its child to say how many messages the
attempt held (its reader thread answers within milliseconds unless C code holds the GIL)."""
_PIPE_BROKE = "its pipe broke"
"""`_Child.killed` when a send failed: the child was dying, not killed by the driver."""
_PRELOAD = ("pipeloom", "pipeloom.pipeline", "pipeloom.executors._process_child")
"""What the forkserver imports once for all its children: pipeloom's own modules only, never
the user's script (importing that has side effects the user placed in each worker)."""


class ProcessExecutor(Executor):
    """Runs tasks in child processes started with ``forkserver`` (Linux) or ``spawn``.

    The worker function and every task are pickled to the children, so both must be
    importable: defined at the top level of a module or of the script being run (a file
    given to ``pipeloom run file.py:pipe`` works too). Messages and results come back
    pickled; a result that cannot be pickled makes its task ``error``.

    Args:
        max_workers: caps the number of child processes.
        start_method: ``"forkserver"`` (the default where it exists) or ``"spawn"``.
            Never ``fork``: it would copy the writer's threads and locks into the child.
    """

    name = "processes"

    def __init__(self, max_workers: int | None = None, start_method: str | None = None) -> None:
        """Check the settings; no process starts until `start`."""
        if max_workers is not None and max_workers < 1:
            raise ValueError(f"ProcessExecutor(max_workers={max_workers}): use 1 or more")
        if start_method is None:
            start_method = (
                "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
            )
        if start_method not in ("spawn", "forkserver"):
            raise ValueError(
                f"ProcessExecutor(start_method={start_method!r}): use 'spawn' or 'forkserver' "
                "(fork copies the writer's threads and locks into the child)"
            )
        self.max_workers = max_workers
        self.start_method = start_method
        self._children: list[_Child] = []
        self._unsent: list[tuple[int, Any, str]] = []
        """Tasks that could not be pickled: the collector records each one's error."""
        self._pending: collections.deque[tuple[int, Any, bytes, int]] = collections.deque()
        self._lock = threading.Lock()
        self._withdrawals: queue.SimpleQueue[Withdrawal] = queue.SimpleQueue()
        """Requests for `withdraw_unbegun`, served by the collector, which owns the children."""
        self._withdrawn: set[int] = set()
        """Tasks taken back unbegun as the run was abandoned: what they send is dropped."""
        self._closing = threading.Event()
        self._collector: threading.Thread | None = None
        self._payload = b""
        self._preload: list[tuple[str, str]] = []
        self._ctx: Any = None
        self._told_stopping = False
        self._start_deaths = 0
        """Children in a row that died before saying a word (`_died_starting`)."""
        self._wakeup_r: Connection | None = None
        self._wakeup_w: Connection | None = None
        self._dumps: Callable[[Any], bytes] = _plain_dumps
        """Pickles for the children: by value when ``__main__`` is a notebook's (no file)."""

    def start(self, workers: int, worker_fn: WorkerFn, sink: Sink, engine: Completions) -> None:
        """Check the worker function pickles, then start the children and the collector.

        Raises:
            PipeloomError: the worker function cannot be sent to a child process.
        """
        if self.max_workers is not None:
            workers = min(workers, self.max_workers)
        super().start(workers, worker_fn, sink, engine)
        self._dumps = _interactive_dumps() if main_is_interactive() else _plain_dumps
        self._payload = _pickle_worker(worker_fn, self._dumps)
        self._preload = file_modules()
        self._ctx = multiprocessing.get_context(self.start_method)
        if self.start_method == "forkserver":
            # Children fork from a server that has imported what each of them needs once
            # (the child's loop and the pipeline the script imports), instead of each
            # starting an interpreter and importing it: ~230 ms of CPU a child here.
            self._ctx.set_forkserver_preload(list(_PRELOAD))
        self._wakeup_r, self._wakeup_w = self._ctx.Pipe(duplex=False)
        for _ in range(workers):
            self._children.append(self._spawn())
        self._collector = threading.Thread(
            target=self._collect, name="pipeloom-processes", daemon=True
        )
        self._collector.start()

    def _spawn(self) -> _Child:
        parent, child = self._ctx.Pipe()
        level = logging.getLogger().getEffectiveLevel()
        proc = self._ctx.Process(
            target=child_main,
            args=(child, self._payload, self._preload, level),
            name="pipeloom-process",
            daemon=True,
        )
        proc.start()
        child.close()
        return _Child(proc, parent)

    def tasks_ahead(self) -> int:
        """One task may wait in each child behind its running one (see the module's text)."""
        return len(self._children)

    def withdraw_unbegun(self) -> list[int]:
        """Take back the tasks waiting in a child or still to be sent (see `Executor`).

        The collector does it, as it owns what each child was sent; it is asked and waited
        for (briefly: a collector that does not answer leaves them to be recorded
        ``interrupted``, as before).
        """
        collector = self._collector
        if collector is None or not collector.is_alive():
            return self._withdraw()
        request = Withdrawal()
        self._withdrawals.put(request)
        self._wake()
        return request.answer("the process collector")

    def _serve_withdrawals(self) -> None:
        while True:
            try:
                request = self._withdrawals.get_nowait()
            except queue.Empty:
                return
            request.give(self._withdraw())

    def _take_pending(self) -> list[tuple[int, Any, bytes, int]]:
        """Every task not yet sent to a child, taken out of the queue."""
        with self._lock:
            items = list(self._pending)
            self._pending.clear()
        return items

    def _withdraw(self) -> list[int]:
        items = self._take_pending()
        for child in self._children:
            # As far as the driver knows, none of these began. One that did, in the last
            # milliseconds, is killed with its child before anything it sends is stored.
            items.extend(child.queued)
            child.queued.clear()
            child.recalling = None
        ids = [item[0] for item in items]
        self._withdrawn.update(ids)
        return ids

    def run_stopping(self) -> None:
        """Wake the collector now, to tell every child before it begins a waiting task."""
        self._wake()

    def submit(self, task_id: int, task: Any) -> None:
        """Pickle the task here (so an unpicklable one is its own error) and hand it over.

        One that does not pickle is completed as an error by the collector (never from
        ``submit`` itself), so the stages that consume it are recorded too.
        """
        try:
            blob = self._dumps(task)
        except Exception as exc:
            text = crossing_text(task_id, task_what(task), "pickled for a worker process", exc)
            with self._lock:
                self._unsent.append((task_id, task, text))
        else:
            with self._lock:
                self._pending.append((task_id, task, blob, 1))
        if threading.current_thread() is not self._collector:
            self._wake()  # the collector submits from a completion and dispatches next anyway

    def _wake(self) -> None:
        if self._wakeup_w is not None:
            try:
                self._wakeup_w.send_bytes(b"!")
            except OSError as exc:  # the collector has already gone
                log.debug("could not wake the process collector: %s", exc)

    def _dispatch(self) -> None:
        if self._unsent:
            with self._lock:
                unsent, self._unsent = self._unsent, []
            for task_id, task, text in unsent:
                self.engine.task_done(task_id, task, RemoteTaskError(text, None), False)
        if self.engine.stopping.is_set():
            for task_id, task, _, _ in self._take_pending():
                self.engine.not_begun(task_id, task)
            return
        with self._lock:
            ready = [c for c in self._children if c.alive and c.killed is None]
            # Idle children first, then one task to wait behind each running one.
            for child in [c for c in ready if c.task is None] + ready:
                if not self._pending:
                    break
                if child.task is not None and (child.queued or child.expiring is not None):
                    continue
                item = self._pending.popleft()
                try:
                    child.conn.send(("task", item[0], item[2], item[3]))
                except OSError:
                    # It is dying; its exit, seen next, replaces it. The task waits.
                    self._pending.appendleft(item)
                    child.killed = child.killed or _PIPE_BROKE
                    continue
                if child.task is None:
                    child.began = item
                    child.deadline = None
                else:
                    child.queued.append(item)
            idle = sum(1 for c in ready if c.task is None)
        if idle and not self._pending:
            self._take_back(idle)

    def _take_back(self, idle: int) -> None:
        """Ask children for tasks waiting behind their running ones, for idle children."""
        for child in self._children:
            if idle == 0:
                return
            if child.alive and child.queued and child.recalling is None:
                child.recalling = child.queued[-1][0]
                try:
                    child.conn.send(("unqueue", child.recalling))
                except OSError as exc:  # dying: its exit puts the task back anyway
                    log.debug("child %s is gone: %s", child.proc.pid, exc)
                idle -= 1

    def _requeue(self, child: _Child) -> None:
        """The tasks waiting in ``child`` were never begun: they go to the next free child."""
        child.recalling = None
        if child.queued:
            with self._lock:
                self._pending.extendleft(reversed(child.queued))
            child.queued.clear()

    def _collect(self) -> None:
        engine = self.engine
        try:
            while not self._closing.is_set():
                self._dispatch()
                ready = wait(self._waitables(), timeout=_POLL)
                for obj in ready:
                    if obj is self._wakeup_r:
                        self._drain_wakeups()
                        self._serve_withdrawals()
                        continue
                    child = self._child_of(obj)
                    if child is None:
                        continue
                    if obj is child.conn:
                        self._receive(child)
                    else:
                        self._died(child)
                self._check_deadlines()
                if engine.stopping.is_set() and not self._told_stopping:
                    self._told_stopping = True
                    self._broadcast(("stopping",))
        except Exception as exc:
            if not self._closing.is_set():
                engine.executor_failed(exc)

    def _broadcast(self, item: tuple[Any, ...]) -> None:
        for child in self._children:
            if child.alive:
                try:
                    child.conn.send(item)
                except OSError as exc:
                    log.debug("child %s is gone: %s", child.proc.pid, exc)

    def _waitables(self) -> list[Any]:
        items: list[Any] = [self._wakeup_r]
        for child in self._children:
            if child.alive:
                items.append(child.conn)
                items.append(child.proc.sentinel)
        return items

    def _drain_wakeups(self) -> None:
        reader = self._wakeup_r
        assert reader is not None
        while reader.poll():
            reader.recv_bytes()

    def _child_of(self, obj: Any) -> _Child | None:
        for child in self._children:
            if obj is child.conn or obj == child.proc.sentinel:
                return child
        return None

    def _receive(self, child: _Child) -> None:
        try:
            while child.conn.poll():
                self._handle(child, child.conn.recv())
        except (EOFError, OSError):
            self._died(child)

    def _handle(self, child: _Child, item: tuple[Any, ...]) -> None:
        if not child.ready:  # its first words: it got past starting
            child.ready = True
            self._start_deaths = 0
        kind = item[0]
        if kind == "msgs":
            self._forward(child, unpack(item[1], child.task[0] if child.task else None))
        elif kind == "done":
            task = child.task
            finish, lost = child.finish, child.lost
            child.began = child.deadline = child.expiring = child.finish = child.lost = None
            child.recalling = None  # an "unqueued" for the next task may still come
            self._next(child)
            if task is not None:
                outcome = unpack_outcome(task[0], item[2])
                finish, error, returned = settle(outcome, finish, lost)
                if finish is not None:
                    self.sink.put(finish)
                self.engine.task_done(task[0], task[1], error, finish is not None, returned)
        elif kind == "ready":
            pass  # noted above
        elif kind == "unqueued" or kind == "skipped":
            self._returned(child, item[1], kind == "skipped")
        elif kind == "deadline":
            _, seconds, attempt, retry = item
            child.deadline = None if seconds is None else (time.monotonic() + seconds)
            child.attempt = (attempt, seconds, retry)
        elif kind == "held":
            if child.expiring is not None and child.task is not None:
                self._kill_for_timeout(child, item[1])
        elif kind == "log":
            record = logging.makeLogRecord(item[1])
            logging.getLogger(record.name).handle(record)
        elif kind == "fatal":
            self.engine.executor_failed(RemoteTaskError(item[1], item[2]))
            self._closing.set()

    def _next(self, child: _Child) -> None:
        """The task waiting behind the one that ended is the child's running task now.

        If it was being taken back, it may not have begun: the child then says "unqueued".
        """
        child.began = child.queued.popleft() if child.queued else None

    def _returned(self, child: _Child, task_id: int, skipped: bool) -> None:
        """A task the child gave back (taken back, or skipped as the run stopped) unbegun."""
        if child.recalling == task_id:
            child.recalling = None
        item = next((x for x in child.queued if x[0] == task_id), None)
        if item is not None:
            child.queued.remove(item)
        elif child.began is not None and child.began[0] == task_id:
            item = child.began
            child.began = child.deadline = child.finish = child.lost = None
            self._next(child)
        else:
            return
        if skipped:
            self.engine.not_begun(task_id, item[1])
        else:
            with self._lock:
                self._pending.appendleft(item)

    def _forward(self, child: _Child, batch: Any) -> None:
        """Put a child's batch on the writer's queue, holding back its task's own finish.

        The finish waits for the task's outcome (`settle`): a result that cannot cross turns
        a ``done`` into ``error``, which must happen before the writer sees ``done``.
        """
        task_id = child.task[0] if child.task is not None else None
        if isinstance(batch, Unsent):
            self._lost(child, task_id, batch.reason)
            return
        put = self.sink.put
        withdrawn = self._withdrawn
        for msg in batch:
            if (
                withdrawn
                and type(msg) in PIPELOOM_MESSAGES
                and getattr(msg, "task_id", None) in withdrawn
            ):
                continue  # it began as the run was abandoned: it counts as never begun
            if type(msg) is Unsent:
                self._lost(child, task_id, msg.reason)
            elif (
                type(msg) is MsgTaskFinished
                and msg.task_id == task_id
                and task_id is not None
                and child.finish is None
            ):
                child.finish = msg
            else:
                put(msg)

    def _lost(self, child: _Child, task_id: int | None, reason: str) -> None:
        log.error("%s", reason)
        if task_id is not None and child.lost is None:
            child.lost = reason

    def _died(self, child: _Child) -> None:
        if not child.alive:
            return
        child.alive = False
        try:
            while child.conn.poll():  # what it sent before it died still counts
                self._handle(child, child.conn.recv())
        except (EOFError, OSError):
            pass
        child.proc.join(1.0)
        code = child.proc.exitcode
        if not child.ready and child.killed in (None, _PIPE_BROKE):
            self._died_starting(child, code)
            return
        task = child.task
        finish = child.finish
        child.began = child.finish = None
        self._requeue(child)
        if task is not None and finish is not None:
            # It finished, then died before its outcome came: the finish it sent stands.
            self.sink.put(finish)
            self.engine.task_done(task[0], task[1], None, True)
        elif task is not None:
            how = _death_text(child.killed, code)
            self.engine.task_done(
                task[0],
                task[1],
                RemoteTaskError(f"WorkerDied: worker process died ({how})", None),
                False,
            )
        child.conn.close()
        if not self._closing.is_set():
            with self._lock:
                self._children.remove(child)
                self._children.append(self._spawn())

    def _died_starting(self, child: _Child, code: int | None) -> None:
        """A child died before it could say a word: it never began the tasks it was sent.

        They go to the next child. When every child in a row dies so (a script that cannot be
        imported, or that starts a run at import), the run stops with the reason instead of
        starting children without end.
        """
        if child.began is not None:
            child.queued.appendleft(child.began)
        child.began = child.finish = None
        self._requeue(child)
        child.conn.close()
        self._start_deaths += 1
        limit = max(2, self.workers)
        with self._lock:
            self._children.remove(child)
            if self._start_deaths < limit and not self._closing.is_set():
                self._children.append(self._spawn())
                return
        if self._start_deaths > limit:
            return  # the run was told already; the others' deaths say nothing new
        self.engine.executor_failed(
            ExecutorFailedError(
                f"{limit} worker processes in a row died while starting ({_exit_text(code)}), "
                "before running any task; each printed its error on stderr. A script that "
                'starts its run when imported needs `if __name__ == "__main__":` around the run'
            )
        )

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for child in list(self._children):
            if not child.alive:
                continue
            if child.deadline is not None and now > child.deadline:
                # Ask first how many messages the attempt holds (its reader thread answers),
                # so the record counts what the kill discards, as the other executors do.
                child.deadline = None
                child.expiring = now + _EXPIRE_GRACE
                try:
                    child.conn.send(("expire",))
                except OSError:
                    self._kill_for_timeout(child, None)
            elif child.expiring is not None and now > child.expiring:
                log.debug("child %s did not say what its attempt held", child.proc.pid)
                self._kill_for_timeout(child, None)

    def _kill_for_timeout(self, child: _Child, held: int | None) -> None:
        task = child.task
        attempt, seconds, retry = child.attempt
        child.began = child.deadline = child.expiring = child.finish = child.lost = None
        child.proc.kill()
        child.killed = "killed after its timeout"
        self._requeue(child)
        if task is None:
            return
        task_id, obj = task
        note = f" ({held} emitted message{'' if held == 1 else 's'} of this attempt discarded)"
        text = (
            f"TaskTimeoutError: did not finish within {seconds:g} s; its worker process was killed"
            + (note if held else "")
        )
        if retry and not self.engine.stopping.is_set():
            self.sink.put(MsgTaskAttempt(task_id, attempt, "timeout", text, discarded=held or 0))
            blob = self._dumps(obj)
            with self._lock:
                self._pending.appendleft((task_id, obj, blob, attempt + 1))
            return
        self.sink.put(
            MsgTaskFinished(
                task_id,
                "timeout",
                utc_now(),
                message=text,
                error=text,
                attempt=attempt,
                name=getattr(obj, "name", None),
                key=getattr(obj, "key", None),
            )
        )
        self.engine.task_done(task_id, obj, None, True)

    def cancel(self) -> None:
        """Kill every child: what they were running is abandoned (a second Ctrl-C)."""
        self._closing.set()
        for child in self._children:
            if child.proc.is_alive():
                child.proc.kill()

    def shutdown(self, timeout: float | None) -> bool:
        """Ask idle children to exit, kill the rest after ``timeout``; True when all are gone."""
        self._closing.set()
        self._wake()
        if self._collector is not None:
            self._collector.join(5.0)
        for child in self._children:
            try:
                child.conn.send(("stop",))
            except OSError as exc:
                log.debug("child %s already gone: %s", child.proc.pid, exc)
        deadline = time.monotonic() + (5.0 if timeout is None else timeout)
        for child in self._children:
            child.proc.join(max(0.0, deadline - time.monotonic()))
            if child.proc.is_alive():
                child.proc.kill()
                child.proc.join(1.0)
            child.conn.close()
        for end in (self._wakeup_r, self._wakeup_w):
            if end is not None:
                end.close()
        return not any(c.proc.is_alive() for c in self._children)


@dataclass(eq=False)
class _Child:
    proc: Any
    conn: Connection
    deadline: float | None = None
    attempt: tuple[int, float, bool] = (1, 0.0, False)
    alive: bool = True
    killed: str | None = None
    expiring: float | None = None
    """Set once its attempt's deadline passed: when to kill it if it does not answer."""
    finish: MsgTaskFinished | None = None
    """Its task's own finish, held until the task's outcome arrives (see `settle`)."""
    lost: str | None = None
    """Why a message of its task could not cross, if one could not."""
    queued: collections.deque[tuple[int, Any, bytes, int]] = field(
        default_factory=collections.deque
    )
    """Tasks sent to wait behind ``task``, not yet begun as far as the driver knows."""
    recalling: int | None = None
    """The waiting task it was asked to give back (``"unqueue"``), until it answers."""
    began: tuple[int, Any, bytes, int] | None = None
    """The task it runs (as far as the driver knows), as it was sent: given back whole if it
    turns out it never began."""
    ready: bool = False
    """It has said something (its first words: ``"ready"``): it got past starting."""

    @property
    def task(self) -> tuple[int, Any] | None:
        """The running task's id and object, or None when it is idle."""
        began = self.began
        return None if began is None else (began[0], began[1])


def _death_text(killed: str | None, code: int | None) -> str:
    """Why a child died, for its task's error: what the driver did, else how it exited.

    A pipe found broken is only how the driver noticed: the exit code, once known, says
    what happened (``exit code 3``, ``signal SIGKILL``).
    """
    if killed is not None and (killed != _PIPE_BROKE or code is None):
        return killed
    return _exit_text(code)


def _exit_text(code: int | None) -> str:
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def _plain_dumps(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _main_by_value(obj: Any) -> bytes:
    """Plain pickle, unless it refers to the notebook's ``__main__``: then by value.

    A child cannot import a ``__main__`` that has no file, so what is defined there travels
    by value (cloudpickle); everything else keeps plain pickle's rules and speed.
    """
    blob = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return dumps_by_value(obj) if b"__main__" in blob else blob


def _interactive_dumps() -> Callable[[Any], bytes]:
    """The pickler for a notebook's ``__main__``: by value when cloudpickle is installed."""
    try:
        import cloudpickle  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        return _plain_dumps  # _pickle_worker says what to do
    return _main_by_value


def _pickle_worker(worker_fn: WorkerFn, dumps: Callable[[Any], bytes] = _plain_dumps) -> bytes:
    """Pickle the worker function, or say in one line why it cannot go to a child.

    Raises:
        PipeloomError: it is a lambda, a nested function, or holds something unpicklable.
    """
    name = getattr(worker_fn, "__qualname__", None) or type(worker_fn).__qualname__
    module = getattr(worker_fn, "__module__", None) or type(worker_fn).__module__
    if module == "__main__" and main_is_interactive() and dumps is _plain_dumps:
        raise PipeloomError(
            f"worker function {name} is defined in an interactive __main__, which a worker "
            "process cannot import; move it into a .py file and import it from there, or "
            "install cloudpickle (uv add 'pipeloom-core[dask]') to send it by value"
        )
    try:
        return dumps(worker_fn)
    except Exception as exc:
        raise PipeloomError(
            f"worker function {module}.{name} cannot be sent to a worker process "
            f"({exc_summary(exc)}); define it at the top level of a module (not a lambda "
            "or a function inside a function), or use executor='threads'"
        ) from exc
