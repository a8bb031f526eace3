"""A worker process of `pipeloom.executors.processes`: the child's side of the pipe.

`child_main` runs in each child process the driver starts: it loads the worker function
(and the script modules it needs), then runs one task at a time as the driver sends them,
sending back the task's messages in batches (`BatchingSink`), its log records (`_PipeHandler`)
and how it ended. The next task may already wait here behind the running one; it is given
back if the driver asks before it begins, and skipped (never begun) once the run stops. It
ignores stop signals (the driver decides) and exits when the driver dies (`_parent`). The
driver's side, `ProcessExecutor`, never runs here.
"""

from __future__ import annotations

import collections
import logging
import pickle
import threading
from multiprocessing.connection import Connection
from typing import Any

from pipeloom._text import exc_summary, exc_text, storable
from pipeloom.executors import _deadline as deadline
from pipeloom.executors._parent import die_with_parent, driver_gone, ignore_stop_signals
from pipeloom.executors._remote import (
    BatchingSink,
    Outcome,
    crossing_text,
    failing_class,
    pack,
    pack_outcome,
    run_remote,
)
from pipeloom.executors._shipping import load_file_module

__all__ = ["child_main"]


class _PipeHandler(logging.Handler):
    """Sends a child's log records to the driver, which re-emits them there."""

    def __init__(self, send: Any) -> None:
        super().__init__(logging.NOTSET)
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = {
                "name": record.name,
                "levelno": record.levelno,
                "levelname": record.levelname,
                "msg": storable(record.getMessage()),
                "args": None,
                "created": record.created,
                "pathname": record.pathname,
                "lineno": record.lineno,
                "funcName": record.funcName,
                "process": record.process,
                "processName": record.processName,
                "threadName": record.threadName,
                "exc_text": (
                    logging.Formatter().formatException(record.exc_info)
                    if record.exc_info
                    else record.exc_text
                ),
            }
            self._send(("log", data))
        except Exception:  # a log line must never fail the task
            self.handleError(record)


def child_main(
    conn: Connection, payload: bytes, preload: list[tuple[str, str]], level: int
) -> None:
    """A worker process: run tasks from the driver until told to stop."""
    ignore_stop_signals()  # the driver decides what Ctrl-C, SIGTERM and SIGHUP do
    die_with_parent()
    lock = threading.Lock()

    def send(item: Any) -> None:
        with lock:
            try:
                conn.send(item)
            except (ConnectionError, EOFError):
                driver_gone()

    send(("ready",))  # past starting: what dies from here on dies running, not starting
    root = logging.getLogger()
    root.handlers[:] = [_PipeHandler(send)]
    root.setLevel(level)
    try:
        for name, path in preload:
            load_file_module(name, path)
        worker_fn = pickle.loads(payload)
    except Exception as exc:
        send(
            (
                "fatal",
                f"worker processes cannot load the worker function: {exc_summary(exc)}",
                exc_text(exc),
            )
        )
        return
    deadline.install(send)
    running: list[int | None] = [None]
    sink = BatchingSink(lambda batch: send(("msgs", pack(batch, running[0]))))
    stopping = threading.Event()
    inbox: collections.deque[Any] = collections.deque()
    arrived = threading.Condition(threading.Lock())

    def take_waiting(task_id: int | None) -> list[Any]:
        """Take the tasks waiting in the inbox (or the one of ``task_id``) out of it."""
        with arrived:
            if task_id is None:
                stopping.set()  # under the lock: the loop sees it before its next task
            taken = [x for x in inbox if x[0] == "task" and task_id in (None, x[1])]
            for x in taken:
                inbox.remove(x)
        return taken

    def read() -> None:
        # Reads while a task runs, so "the run is stopping" reaches a retrying task at once,
        # and a task queued behind the running one can be taken back ("unqueue").
        while True:
            try:
                item = conn.recv()
            except (EOFError, OSError):
                driver_gone()  # the driver never closes the pipe before "stop": it died
            kind = item[0]
            if kind == "stopping":  # nothing new starts: give back what waits at once
                for x in take_waiting(None):
                    send(("skipped", x[1]))
                continue
            if kind == "expire":  # the attempt's deadline passed: say what it holds
                send(("held", deadline.held_now()))
                continue
            if kind == "unqueue":  # another worker is free: give back a task not yet begun
                if take_waiting(item[1]):
                    send(("unqueued", item[1]))
                continue
            with arrived:
                inbox.append(item)
                arrived.notify()
            if kind == "stop":
                return

    threading.Thread(target=read, name="pipeloom-child-reader", daemon=True).start()
    while True:
        with arrived:
            while not inbox:
                arrived.wait()
            item = inbox.popleft()
        if item[0] == "stop":
            break
        _, task_id, blob, first = item
        if stopping.is_set():  # sent before the run stopped, not begun: nothing new starts
            send(("skipped", task_id))
            continue
        try:
            task = pickle.loads(blob)
        except Exception as exc:
            what = f"its task ({failing_class(blob)})"
            text = crossing_text(task_id, what, "unpickled in the worker", exc)
            send(("done", task_id, pack_outcome(Outcome(task_id, text, exc_text(exc)))))
            continue
        running[0] = task_id
        outcome = run_remote(worker_fn, task_id, task, sink, first, stopping)
        running[0] = None
        send(("done", task_id, pack_outcome(outcome)))
    sink.close()
