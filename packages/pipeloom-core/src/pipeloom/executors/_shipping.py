"""Sending work to another process: the modules a fresh interpreter cannot import by name.

Shared by the process and Dask executors: a pipeline loaded straight from a file
(``pipeloom run file.py:pipe``) has a module no worker can import, so its path travels with
the worker function and each worker loads it before unpickling.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

__all__ = ["file_modules", "load_file_module"]


def file_modules() -> list[tuple[str, str]]:
    """Find the modules a fresh process could not import by name.

    Those were loaded straight from a file (``pipeloom run file.py:pipe``); each child loads
    them from their files before it unpickles the worker function.
    """
    found: list[tuple[str, str]] = []
    stdlib = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix)}
    for name, module in list(sys.modules.items()):
        if "." in name or name in ("__main__", "__mp_main__"):
            continue
        origin = getattr(getattr(module, "__spec__", None), "origin", None)
        if not origin or not origin.endswith(".py") or not Path(origin).is_file():
            continue
        real = os.path.realpath(origin)
        if any(real.startswith(p + os.sep) for p in stdlib):
            continue
        if importlib.machinery.PathFinder.find_spec(name, sys.path) is None:
            found.append((name, origin))
    return found


def load_file_module(name: str, path: str) -> None:
    """Load a module that was loaded from a file in the driver, under its name, here too."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(
            f"{path}: cannot load it as module {name} in a worker process; keep the file in "
            "place while the run lasts, or make it an importable module"
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
