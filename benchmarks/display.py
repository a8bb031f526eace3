"""The live display's cost: throughput.py under a pseudo-terminal, bars on versus off.

Both runs write to a pty (so Rich sees a terminal and draws); one passes ``--progress`` and
one does not. The parent drains the pty so the child never blocks on a full terminal buffer,
and counts what was drawn. One JSON line per shape: medians over ``--reps`` on/off pairs
and their ratio.

    uv run python benchmarks/display.py --shape 100000x1
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
from pathlib import Path
from typing import Any

THROUGHPUT = Path(__file__).with_name("throughput.py")


def drain(fd: int, counter: list[int]) -> None:
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO once the child side is closed
            return
        if not chunk:
            return
        counter[0] += len(chunk)


def run_under_pty(tasks: int, steps: int, progress: bool) -> dict[str, Any]:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    with tempfile.TemporaryDirectory(prefix="pipeloom-bench-") as tmp:
        out = Path(tmp) / "result.jsonl"
        cmd = [
            sys.executable,
            str(THROUGHPUT),
            "--tasks",
            str(tasks),
            "--steps",
            str(steps),
            "--json-out",
            str(out),
            "--label",
            "display",
        ]
        if progress:
            cmd.append("--progress")
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
        env.pop("NO_COLOR", None)
        drawn = [0]
        reader = threading.Thread(target=drain, args=(master, drawn), daemon=True)
        reader.start()
        child = subprocess.run(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, check=False)
        os.close(slave)
        reader.join(10)
        os.close(master)
        lines = out.read_text(encoding="utf-8").splitlines() if out.exists() else []
    if child.returncode != 0 or not lines:
        raise SystemExit(f"throughput.py under a pty failed (exit {child.returncode}): {cmd}")
    result: dict[str, Any] = json.loads(lines[-1])
    result["pty_bytes"] = drawn[0]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", action="append", help="TxS, e.g. 100000x1 (repeatable)")
    parser.add_argument("--reps", type=int, default=1, help="pairs per shape; medians reported")
    args = parser.parse_args()
    shapes = args.shape or ["10000x10", "100000x1"]
    ok = True
    for shape in shapes:
        tasks, steps = (int(part) for part in shape.lower().split("x"))
        offs: list[dict[str, Any]] = []
        ons: list[dict[str, Any]] = []
        for rep in range(args.reps):
            order = (False, True) if rep % 2 == 0 else (True, False)  # alternate: load drifts
            for progress in order:
                (ons if progress else offs).append(run_under_pty(tasks, steps, progress))
        off_rate = statistics.median(r["msgs_per_s"] for r in offs)
        on_rate = statistics.median(r["msgs_per_s"] for r in ons)
        verified = all(r["verified"] for r in offs + ons) and all(r["pty_bytes"] for r in ons)
        ok = ok and verified
        print(
            json.dumps(
                {
                    "bench": "display",
                    "tasks": tasks,
                    "steps": steps,
                    "reps": args.reps,
                    "off_msgs_per_s": round(off_rate),
                    "on_msgs_per_s": round(on_rate),
                    "off_wall_s": statistics.median(r["wall_s"] for r in offs),
                    "on_wall_s": statistics.median(r["wall_s"] for r in ons),
                    "on_over_off": round(on_rate / off_rate, 3),
                    "off_walls_s": [r["wall_s"] for r in offs],
                    "on_walls_s": [r["wall_s"] for r in ons],
                    "on_peak_rss_mb": max(r["peak_rss_mb"] for r in ons),
                    "pty_bytes_off": max(r["pty_bytes"] for r in offs),
                    "pty_bytes_on": min(r["pty_bytes"] for r in ons),
                    "verified": verified,
                }
            ),
            flush=True,
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
