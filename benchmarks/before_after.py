"""Compare the default thread path of two checkouts side by side, in one script.

Usage::

    git worktree add /tmp/before <commit> && (cd /tmp/before && uv sync --locked --all-packages)
    uv run python benchmarks/before_after.py /tmp/before . --runs 5

Runs this checkout's ``benchmarks/throughput.py`` with each checkout's own interpreter
(``.venv/bin/python``), alternating before and after so load on a shared machine hits both
alike, for 1,000 x 100 and 100,000 x 1 tasks. Prints one JSON line per run and one per case
with the medians, the after/before ratio of messages per second and the median peak RSS.
``ab.py`` does the same for the modes of ``rows.py`` and ``etl.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

CASES = ((1_000, 100), (100_000, 1))
HERE = Path(__file__).resolve().parent


def _run(tree: Path, tasks: int, steps: int) -> dict[str, Any]:
    python = tree / ".venv" / "bin" / "python"
    env = {**os.environ, "PYTHONPATH": ""}
    out = subprocess.run(
        [str(python), str(HERE / "throughput.py"), "--tasks", str(tasks), "--steps", str(steps)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    data: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("before", type=Path, help="checkout with its own .venv")
    parser.add_argument("after", type=Path, help="checkout with its own .venv")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    for tasks, steps in CASES:
        rates: dict[str, list[float]] = {"before": [], "after": []}
        rss: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(args.runs):
            for label, tree in (("before", args.before), ("after", args.after)):
                data = _run(tree.resolve(), tasks, steps)
                rates[label].append(float(data["msgs_per_s"]))
                rss[label].append(float(data["peak_rss_mb"]))
                print(json.dumps({"side": label, **data}), flush=True)
        before = statistics.median(rates["before"])
        after = statistics.median(rates["after"])
        print(
            json.dumps(
                {
                    "case": f"{tasks}x{steps}",
                    "before_msgs_per_s": round(before),
                    "after_msgs_per_s": round(after),
                    "ratio": round(after / before, 3),
                    "before_range": [min(rates["before"]), max(rates["before"])],
                    "after_range": [min(rates["after"]), max(rates["after"])],
                    "before_peak_rss_mb": statistics.median(rss["before"]),
                    "after_peak_rss_mb": statistics.median(rss["after"]),
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
