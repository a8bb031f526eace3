"""What every benchmark script here does around its own measuring: runs and their summary.

Each run happens in a child process of its own (so peak RSS and start-up are that run's
alone), modes alternating so that load on a shared machine hits them alike; each prints one
JSON line, and the script's summary follows them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def run_child(script: str, args: Sequence[str], env: Mapping[str, str] | None = None) -> Any:
    """Run ``script`` with ``args`` in a fresh interpreter; its last JSON line.

    Raises:
        SystemExit: the run failed (its stderr is printed first).
    """
    cmd = [sys.executable, script, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        raise SystemExit(f"{' '.join(cmd[1:])} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def alternate(
    script: str,
    modes: Sequence[str],
    repeat: int,
    args_of: Callable[[str], list[str]],
    env: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """``repeat`` rounds of one run of each mode, each line printed as it comes."""
    lines: list[dict[str, Any]] = []
    for _ in range(repeat):
        for mode in modes:
            lines.append(run_child(script, args_of(mode), env))
            print(json.dumps(lines[-1]), flush=True)
    return lines


def finish(lines: list[dict[str, Any]], summary: dict[str, Any], json_out: str | None) -> int:
    """Print ``summary`` after the runs, append them all to ``json_out``; the exit status."""
    lines.append(summary)
    print(json.dumps(summary), flush=True)
    if json_out:
        with open(json_out, "a", encoding="utf-8") as fh:
            fh.writelines(json.dumps(x) + "\n" for x in lines)
    return 0 if summary["verified"] else 1
