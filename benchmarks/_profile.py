"""cProfile for every thread of a process (cProfile alone sees only the thread it runs in).

``install(folder, tag)`` wraps ``threading.Thread.run`` so each thread started afterwards
writes ``folder/tag-THREADNAME-ID.prof`` when it ends; `main_thread` profiles a block of the
calling thread. Used by the benchmarks under ``PIPELOOM_PROFILE=DIR``; read the files with
``python -m pstats`` or `summary`.
"""

from __future__ import annotations

import cProfile
import pstats
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_installed = False


def install(folder: str | Path, tag: str) -> None:
    """Profile every thread started from now on; each writes its stats when it ends."""
    global _installed
    if _installed:
        return
    _installed = True
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    # _bootstrap_inner, not run: the writer is a Thread subclass with a run() of its own.
    original = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

    def run(self: threading.Thread) -> None:
        prof = cProfile.Profile()
        prof.enable()
        try:
            original(self)
        finally:
            prof.disable()
            name = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.name)
            prof.dump_stats(str(out / f"{tag}-{name}-{threading.get_ident()}.prof"))

    threading.Thread._bootstrap_inner = run  # type: ignore[attr-defined]


@contextmanager
def main_thread(folder: str | Path, tag: str) -> Iterator[None]:
    """Profile the calling thread for the block."""
    prof = cProfile.Profile()
    prof.enable()
    try:
        yield
    finally:
        prof.disable()
        Path(folder).mkdir(parents=True, exist_ok=True)
        prof.dump_stats(str(Path(folder) / f"{tag}-main.prof"))


def summary(paths: list[Path], top: int = 25) -> list[dict[str, Any]]:
    """The ``top`` functions by own time over ``paths``, as JSON-able rows."""
    stats = pstats.Stats(*[str(p) for p in paths])
    rows = []
    total = stats.total_tt  # type: ignore[attr-defined]
    for (file, line, fn), (_cc, nc, tt, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {
                "fn": f"{Path(file).name}:{line}:{fn}",
                "calls": nc,
                "own_s": round(tt, 3),
                "cum_s": round(ct, 3),
            }
        )
    rows.sort(key=lambda r: -r["own_s"])
    return [{"total_s": round(total, 3)}, *rows[:top]]


def main() -> None:
    """``python benchmarks/_profile.py DIR [TOP]``: each profile's top functions by own time."""
    import json
    import sys

    folder = Path(sys.argv[1])
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 12
    for path in sorted(folder.glob("*.prof")):
        rows = summary([path], top)
        if rows[0]["total_s"] < 0.05:
            continue
        print(json.dumps({"profile": path.name, **rows[0]}))
        for row in rows[1:]:
            print("   ", json.dumps(row))


if __name__ == "__main__":
    main()
