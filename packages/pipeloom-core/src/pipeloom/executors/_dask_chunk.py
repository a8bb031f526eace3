"""The worker side of the Dask executor: a chunk of tasks run inside a Dask worker.

`run_chunk` is what each Dask future runs: it loads the run's worker function once per
worker process (`_FN_CACHE`), runs its tasks one after another with `run_remote`, and sends
their messages, log records and outcomes back in batches on distributed's event stream
(``Worker.log_event``), tagged with the chunk's own token. The driver side, which dispatches
chunks and applies what comes back, is `pipeloom.executors.dask`.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import threading
import time
import uuid
from typing import Any

from pipeloom._text import exc_text
from pipeloom.executors._base import WorkerFn
from pipeloom.executors._remote import (
    BatchingSink,
    Outcome,
    crossing_text,
    dumps_back,
    failing_class,
    pack,
    pack_outcome,
    run_remote,
)
from pipeloom.executors._shipping import load_file_module

__all__ = ["run_chunk", "stop_run"]

log = logging.getLogger("pipeloom.executors.dask")

_FN_CACHE: dict[str, WorkerFn] = {}
"""Worker functions already unpickled in this worker process, by run topic."""
_FN_CACHE_SIZE = 8
_STOPPING: dict[str, threading.Event] = {}
"""Per run (by topic): set once its driver stopped admitting tasks. Chunks then start no
more tasks, and a declarative task's retries end (``TaskQueue.stopping``)."""
_STOPPING_LOCK = threading.Lock()


def _stopping(topic: str) -> threading.Event:
    with _STOPPING_LOCK:
        event = _STOPPING.get(topic)
        if event is None:
            event = _STOPPING[topic] = threading.Event()
            while len(_STOPPING) > _FN_CACHE_SIZE * 8:
                _STOPPING.pop(next(iter(_STOPPING)))
        return event


async def stop_run(topic: str) -> None:
    """Run on every worker (``Client.run``) when the driver stops: chunks skip what is left.

    A coroutine, so it runs on the worker's event loop at once, even while every one of the
    worker's threads is busy with a task.
    """
    _stopping(topic).set()


def _load_fn(topic: str, fn_bytes: bytes, preload: list[tuple[str, str]]) -> WorkerFn:
    fn = _FN_CACHE.get(topic)
    if fn is None:
        # Modules the driver loaded straight from a file (``pipeloom run etl.py:pipe``) have
        # no importable name: load them from the same path first, where it exists.
        for name, path in preload:
            if name not in sys.modules and os.path.isfile(path):
                load_file_module(name, path)
        fn = pickle.loads(fn_bytes)
        while len(_FN_CACHE) >= _FN_CACHE_SIZE:
            _FN_CACHE.pop(next(iter(_FN_CACHE)))
        _FN_CACHE[topic] = fn
    return fn


_dump = dumps_back
"""Pickle for the trip back: plain pickle (fast), by value only when that fails."""


_FORMATTER = logging.Formatter()


class _ForwardLogs(logging.Handler):
    """Sends log records made on one thread (the chunk's) to the driver as small dicts."""

    def __init__(self, sink: BatchingSink, ident: int) -> None:
        super().__init__()
        self.sink = sink
        self.ident = ident

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.ident:
            return
        try:
            item = {
                "name": record.name,
                "levelno": record.levelno,
                "levelname": record.levelname,
                "msg": record.getMessage(),
                "created": record.created,
                "pathname": record.pathname,
                "lineno": record.lineno,
                "funcName": record.funcName,
                "exc_text": _FORMATTER.formatException(record.exc_info)
                if record.exc_info
                else record.exc_text,
            }
            for extra in ("task", "task_id", "task_key", "attempt"):
                if extra in record.__dict__:
                    item[extra] = record.__dict__[extra]
            self.sink.put(("l", item))
        except Exception:
            self.handleError(record)


def _chunk_cancelled(worker: Any, key: str | None) -> bool:
    """True once the scheduler cancelled this chunk's future (checked between tasks)."""
    if key is None:
        return False
    ts = worker.state.tasks.get(key)
    return ts is not None and ts.state in ("cancelled", "released")


def _frames(batch: list[Any], task_id: int | None) -> tuple[list[Any], int | None]:
    """Wrap a batch for the wire: markers as plain data, each run of a task's items packed.

    The markers (a task begins, ends, is skipped) always read back in the driver; a run of
    items that cannot (a class the driver cannot import) is then that one task's loss.
    """
    frames: list[Any] = []
    run: list[Any] = []
    for item in batch:
        if type(item) is tuple and item and item[0] in ("b", "e", "s"):
            if run:
                frames.append(("p", pack(run, task_id, _dump)))
                run = []
            frames.append(item)
            if item[0] == "b":
                task_id = item[1]
            elif item[0] == "e":
                task_id = None
        else:
            run.append(item)
    if run:
        frames.append(("p", pack(run, task_id, _dump)))
    return frames, task_id


def _load_task(task_id: int, blob: bytes) -> tuple[Any, Outcome | None]:
    """Read one task of a chunk; one that cannot be read is its own error, not the chunk's."""
    try:
        return pickle.loads(blob), None
    except Exception as exc:
        what = f"its task ({failing_class(blob)})"
        text = crossing_text(task_id, what, "unpickled in the worker", exc)
        return None, Outcome(task_id, text, exc_text(exc))


def run_chunk(
    topic: str,
    fn_bytes: bytes,
    preload: list[tuple[str, str]],
    payload: bytes,
    levels: dict[str, int],
) -> list[tuple[int, bytes]]:
    """Run a chunk of tasks one after another on a Dask worker, streaming what they send.

    What goes back on the run's topic, in order: ``("b", task_id)`` when a task begins, the
    task's own messages and ``("l", record)`` for its log records (packed, ``("p", bytes)``),
    ``("e", outcome, seconds)`` when it ends (the outcome packed), and ``("s", task_ids)``
    for the tasks it skipped because the run stopped. Each batch is ``(token, frames)`` with
    a token unique to this execution. Returns each task's packed outcome.
    """
    from distributed import get_worker
    from distributed.worker import thread_state  # type: ignore[attr-defined]

    worker = get_worker()
    key = getattr(thread_state, "key", None)
    fn = _load_fn(topic, fn_bytes, preload)
    tasks: list[tuple[int, bytes]] = pickle.loads(payload)
    token = uuid.uuid4().hex
    for name, level in levels.items():
        logger = logging.getLogger(name or None)
        if logger.getEffectiveLevel() > level:
            logger.setLevel(level)

    running: list[int | None] = [None]

    def send(batch: list[Any]) -> None:
        frames, running[0] = _frames(batch, running[0])
        worker.log_event(topic, pickle.dumps((token, frames), protocol=pickle.HIGHEST_PROTOCOL))

    sink = BatchingSink(send)
    forward = _ForwardLogs(sink, threading.get_ident())
    root = logging.getLogger()
    root.addHandler(forward)
    outcomes: list[tuple[int, bytes]] = []
    stopping = _stopping(topic)
    try:
        for n, (task_id, blob) in enumerate(tasks):
            if stopping.is_set() or _chunk_cancelled(worker, key):
                sink.put(("s", [i for i, _ in tasks[n:]]))
                break
            sink.put(("b", task_id))
            began = time.perf_counter()
            task, outcome = _load_task(task_id, blob)
            if outcome is None:
                outcome = run_remote(fn, task_id, task, sink, 1, stopping, flush=False)
            packed = pack_outcome(outcome, _dump)
            sink.put(("e", packed, time.perf_counter() - began))
            outcomes.append((task_id, packed))
            if outcome.fatal:  # KeyboardInterrupt/SystemExit: the driver stops the run
                break
    finally:
        root.removeHandler(forward)
        sink.close()
    return outcomes
