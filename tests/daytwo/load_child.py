"""A process that forks one incremental load per request, for the crash test to SIGKILL.

Usage: ``python load_child.py DB SOURCE``. Python and pipeloom are imported once; each ``run``
line on stdin forks a child that runs `load_until_caught_up` and answers ``pid N``, then
``exit CODE`` when that child ends (a negative code is the signal that killed it). Forking
from this single-threaded process costs milliseconds where starting Python costs most of a
second, so twenty kills stay fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.daytwo._tasks import load_until_caught_up


def main() -> None:
    """Serve ``run`` requests until stdin closes."""
    db, source = sys.argv[1], sys.argv[2]
    for line in sys.stdin:
        if line.strip() != "run":
            continue
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                load_until_caught_up(db, source)
            except BaseException as exc:
                print(f"load failed: {exc!r}", file=sys.stderr, flush=True)
                code = 1
            os._exit(code)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {os.waitstatus_to_exitcode(status)}", flush=True)


if __name__ == "__main__":
    main()
