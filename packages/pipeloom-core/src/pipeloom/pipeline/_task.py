"""`Task`: a task function with its retry and timeout policy, made by `Pipeline.task`.

It sits below `pipeloom.pipeline` so that the runner, the task stream and the executors'
pickler can use it without importing the pipeline module that imports them.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pipeloom.errors import PipelineError
from pipeloom.limits import Limit
from pipeloom.pipeline._context import DEFAULT_MAX_OUTPUTS, Context

__all__ = ["Task"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Task(Generic[T, R]):
    """A task function with its retry and timeout policy; made by `Pipeline.task`.

    Calling it calls the function, so a task stays testable as a plain function.
    """

    fn: Callable[[Context, T], R]
    """``fn(ctx, item)``: does the work for one item; its return value is the result."""
    name: str
    """Prefix of every key and label of this task's runs."""
    retries: int = 0
    """Extra attempts after the first failure."""
    timeout: float | None = None
    """Seconds one attempt may run; over that it is recorded ``timeout``."""
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    """Failures worth retrying; a timeout counts as ``TimeoutError``."""
    backoff: float = 0.5
    """Seconds before the first retry; doubles for each further retry (with jitter)."""
    max_backoff: float = 60.0
    """The longest wait between two attempts."""
    atomic: bool = True
    """Hold ``ctx.emit`` messages and commit them with the ``done`` row, all or none.

    False streams each message to the writer as it is emitted: for outputs too large to hold
    in memory, at the price of a failed attempt's messages staying applied.
    """
    max_outputs: int = DEFAULT_MAX_OUTPUTS
    """Most messages one atomic attempt may hold; one more fails it with `OutputLimitError`."""
    cache: bool = False
    """Take the result of a done task of an earlier run with the same key and fingerprint."""
    cache_key: Callable[[Any], Any] | None = None
    """``cache_key(item)``: what the fingerprint is made of, instead of the item itself."""
    cache_version: str = ""
    """Part of the fingerprint: change it when the function's logic changes."""
    cache_ttl: float | None = None
    """Seconds a cached result stays usable after the task that computed it finished."""
    uses: tuple[str, ...] = ()
    """Resources its tasks hold while they run (`Pipeline.limit`, `pipeloom.limits`)."""
    rate: Limit | None = None
    """Its own rate (``@pipe.task(rate="5/s")``): a resource ``task:NAME`` in ``uses``."""

    def __call__(self, ctx: Context, item: T) -> R:
        """Run the function directly, without retries or timeout (handy in unit tests)."""
        return self.fn(ctx, item)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickle as a reference to the module attribute ``@pipe.task`` bound it to.

        A decorated function's module attribute is this `Task`, not the function, so pickle
        could not find the function by its name; worker processes import the module and take
        the task from there instead.
        """
        module = getattr(self.fn, "__module__", None)
        qualname = getattr(self.fn, "__qualname__", "")
        if module and _lookup(sys.modules.get(module), qualname) is self:
            return (_load_task, (module, qualname))
        return (Task, tuple(getattr(self, f.name) for f in dataclasses.fields(self)))


def _lookup(module: object, qualname: str) -> object:
    obj = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj


def _load_task(module: str, qualname: str) -> Task[Any, Any]:
    """Find a task in its module again (in a worker process)."""
    found = _lookup(importlib.import_module(module), qualname)
    if not isinstance(found, Task):
        raise PipelineError(f"{module}.{qualname} is no longer a pipeloom task")
    return found
