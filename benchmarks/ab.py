"""Two checkouts side by side on ``rows.py`` or ``etl.py`` modes, alternating, in one script.

Usage::

    git archive ef0a41c | tar -x -C /tmp/before && (cd /tmp/before && uv sync --locked)
    uv run python benchmarks/ab.py /tmp/before . --script rows.py --modes atomic,stream
    uv run python benchmarks/ab.py /tmp/before . --script etl.py --modes threads --runs 2

Runs this checkout's script (``--run MODE``) with each checkout's own interpreter, so only
the pipeloom under test differs; before and after alternate so load on a shared machine hits
both alike. Prints one JSON line per run and one per mode with the medians of wall time,
driver CPU time and peak RSS, and the after/before ratio of wall time.
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

HERE = Path(__file__).resolve().parent


def _run(tree: Path, script: str, mode: str, extra: list[str]) -> dict[str, Any]:
    python = tree / ".venv" / "bin" / "python"
    out = subprocess.run(
        [str(python), str(HERE / script), "--run", mode, *extra],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": ""},
    ).stdout
    data: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return data


def _median(lines: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(x[key] for x in lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("before", type=Path, help="checkout with its own .venv")
    parser.add_argument("after", type=Path, help="checkout with its own .venv")
    parser.add_argument("--script", default="rows.py", choices=("rows.py", "etl.py"))
    parser.add_argument("--modes", default="atomic,stream")
    parser.add_argument("--runs", type=int, default=3)
    args, extra = parser.parse_known_args()
    for mode in args.modes.split(","):
        got: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
        for _ in range(args.runs):
            for label, tree in (("before", args.before), ("after", args.after)):
                data = _run(tree.resolve(), args.script, mode, extra)
                got[label].append(data)
                print(json.dumps({"side": label, **data}), flush=True)

        print(
            json.dumps(
                {
                    "script": args.script,
                    "mode": mode,
                    **{
                        f"{side}_{key}": _median(got[side], key)
                        for side in ("before", "after")
                        for key in ("wall_s", "driver_cpu_s", "peak_rss_mb")
                    },
                    "wall_after_over_before": round(
                        _median(got["after"], "wall_s") / _median(got["before"], "wall_s"), 3
                    ),
                    "verified": all(x["verified"] for x in got["before"] + got["after"]),
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
