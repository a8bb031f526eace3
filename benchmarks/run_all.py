"""Run every benchmark as its own process and rewrite the results table in README.md.

    uv run python benchmarks/run_all.py            # about two minutes on 2 cores
    uv run python benchmarks/run_all.py --reps 1   # quicker, noisier

pipeloom and the floor run alternately, ``--reps`` times per shape, and the medians are
compared, because the machine is shared and its load drifts during a run. Every JSON line
the scripts print is kept in ``benchmarks/results.jsonl``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
RESULTS = HERE / "results.jsonl"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
SHAPES = ((1000, 100), (10_000, 10), (100_000, 1))
LIMIT_SHAPES = ((100_000, 1), (1000, 100))
LIMIT_TARGET = 0.65
"""pipeloom's messages/s at least this share of the messaging limit's (issue #16)."""


def run(script: str, *args: str, python: str | None = None) -> list[dict[str, Any]]:
    """Run one benchmark script in a fresh interpreter; return its JSON lines.

    ``python`` is another checkout's interpreter (its ``.venv``): this checkout's script then
    measures that checkout's pipeloom.
    """
    cmd = [python or sys.executable, str(HERE / script), *args]
    env = {**os.environ, "PYTHONPATH": ""} if python else None
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    # A run whose file failed its check still printed its line: the table says "NO".
    if not lines or (proc.returncode != 0 and all(x.get("verified", True) for x in lines)):
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    for line in lines:
        print(json.dumps(line), flush=True)
    return lines


def median_of(rows: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in rows))


def limit_rows(reps: int, before: str | None) -> list[dict[str, Any]]:
    """The user-like workload: the messaging limit, pipeloom, and pipeloom before, alternated.

    The order rotates each repetition, so drifting load hits every side alike.
    """
    sides = ["limit", "pipeloom"] + (["before"] if before else [])
    table = []
    for tasks, steps in LIMIT_SHAPES:
        shape = ["--tasks", str(tasks), "--steps", str(steps)]
        got: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
        for rep in range(reps):
            for side in sides[rep % len(sides) :] + sides[: rep % len(sides)]:
                impl = "limit" if side == "limit" else "pipeloom"
                python = before if side == "before" else None
                lines = run("limit.py", "--impl", impl, *shape, python=python)
                got[side] += [{**line, "side": side} for line in lines]
        row: dict[str, Any] = {"tasks": tasks, "steps": steps, "messages": tasks * (steps + 2)}
        for side, lines in got.items():
            rate = median_of(lines, "msgs_per_s")
            row[side] = {
                "msgs_per_s": rate,
                "wall_s": median_of(lines, "wall_s"),
                "cpu_s": median_of(lines, "cpu_s"),
                "voluntary_switches": median_of(lines, "voluntary_switches"),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in lines),
                "rate_range": [
                    min(r["msgs_per_s"] for r in lines),
                    max(r["msgs_per_s"] for r in lines),
                ],
                "ratio": rate / median_of(got["limit"], "msgs_per_s"),
                "verified": all(r["verified"] for r in lines),
            }
        table.append(row)
    return table


def throughput_rows(reps: int, before: str | None) -> list[dict[str, Any]]:
    table = []
    for tasks, steps in SHAPES:
        shape = ["--tasks", str(tasks), "--steps", str(steps)]
        ours: list[dict[str, Any]] = []
        floor: list[dict[str, Any]] = []
        old: list[dict[str, Any]] = []
        for rep in range(reps):
            order = ("floor.py", "throughput.py") if rep % 2 == 0 else ("throughput.py", "floor.py")
            for script in order:
                (floor if script == "floor.py" else ours).extend(run(script, *shape))
            if before:
                old.extend(run("throughput.py", *shape, python=before))
        wall, floor_wall = median_of(ours, "wall_s"), median_of(floor, "wall_s")
        table.append(
            {
                "before_msgs_ratio": (
                    median_of(old, "msgs_per_s") / median_of(floor, "msgs_per_s") if old else None
                ),
                "before_msgs_per_s": median_of(old, "msgs_per_s") if old else None,
                "tasks": tasks,
                "steps": steps,
                "messages": ours[0]["messages"],
                "wall_s": wall,
                "msgs_per_s": median_of(ours, "msgs_per_s"),
                "tasks_per_s": median_of(ours, "tasks_per_s"),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in ours),
                "floor_wall_s": floor_wall,
                "floor_msgs_per_s": median_of(floor, "msgs_per_s"),
                "floor_peak_rss_mb": max(r["peak_rss_mb"] for r in floor),
                "msgs_ratio": median_of(ours, "msgs_per_s") / median_of(floor, "msgs_per_s"),
                "wall_ratio": wall / floor_wall,
                "verified": all(r["verified"] for r in ours + floor),
                "cpu_s": median_of(ours, "cpu_s"),
                "floor_cpu_s": median_of(floor, "cpu_s"),
                "wall_range_s": [min(r["wall_s"] for r in ours), max(r["wall_s"] for r in ours)],
                "floor_wall_range_s": [
                    min(r["wall_s"] for r in floor),
                    max(r["wall_s"] for r in floor),
                ],
            }
        )
    return table


def fmt(n: float) -> str:
    return f"{n:,.0f}"


def render_limit(limit: list[dict[str, Any]], reps: int, before: str | None) -> list[str]:
    """The user-like workload's table: each side's median, spread and share of the limit."""
    out = [
        "User-like workload (`limit.py`: plain-int tasks, keyword-argument messages, a text per "
        "step, `datetime.now(UTC).isoformat()` timestamps, a result string; 4 workers; not a "
        f"terminal), medians of {reps} runs per side, the sides alternated in rotating order"
        + (f"; before = `{before}`" if before else "")
        + ".",
        "",
        "| tasks x steps | side | msgs/s (min-max) | wall | CPU | vol. switches | peak RSS "
        "| share of the limit | verified |",
        "|---|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in limit:
        for side in ("limit", "before", "pipeloom"):
            if side not in r:
                continue
            d = r[side]
            out.append(
                f"| {r['tasks']:,} x {r['steps']} | {side} | {fmt(d['msgs_per_s'])} "
                f"({fmt(d['rate_range'][0])}-{fmt(d['rate_range'][1])}) | {d['wall_s']:.3f} s "
                f"| {d['cpu_s']:.3f} s | {fmt(d['voluntary_switches'])} "
                f"| {d['peak_rss_mb']:.0f} MB | {d['ratio']:.2f}x "
                f"| {'yes' if d['verified'] else 'NO'} |"
            )
    return out


def render(
    machine: str,
    limit: list[dict[str, Any]],
    through: list[dict[str, Any]],
    sqlite_rows: list[dict[str, Any]],
    memory: dict[str, Any],
    stale: list[dict[str, Any]],
    display: list[dict[str, Any]],
    reps: int,
    took: float,
    before: str | None = None,
    load_end: float = float("nan"),
) -> str:
    out = [BEGIN, "", machine, ""]
    out += [*render_limit(limit, reps, before), ""]
    out += [
        f"Throughput: 4 workers, no-op tasks, medians of {reps} alternating runs each.",
        "",
        "| tasks x steps | messages | pipeloom wall | pipeloom msgs/s | tasks/s | peak RSS "
        "| floor wall | floor msgs/s | floor RSS | msgs/s ratio | wall ratio | verified |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in through:
        out.append(
            f"| {r['tasks']:,} x {r['steps']} | {fmt(r['messages'])} | {r['wall_s']:.3f} s "
            f"| {fmt(r['msgs_per_s'])} | {fmt(r['tasks_per_s'])} | {r['peak_rss_mb']:.0f} MB "
            f"| {r['floor_wall_s']:.3f} s | {fmt(r['floor_msgs_per_s'])} "
            f"| {r['floor_peak_rss_mb']:.0f} MB | {r['msgs_ratio']:.2f}x "
            f"| {r['wall_ratio']:.2f} | {'yes' if r['verified'] else 'NO'} |"
        )
    if any(r.get("before_msgs_ratio") for r in through):
        out.append("")
        out.append(
            "The same shapes with pipeloom before (one run per repetition, against the same "
            "floor runs): "
            + "; ".join(
                f"{r['tasks']:,} x {r['steps']}: before {fmt(r['before_msgs_per_s'])} msgs/s "
                f"= {r['before_msgs_ratio']:.2f}x the floor, after {r['msgs_ratio']:.2f}x"
                for r in through
            )
            + "."
        )
    out.append("")
    out.append(
        "Spread of the wall times (min-max over the runs): "
        + "; ".join(
            f"{r['tasks']:,} x {r['steps']}: pipeloom {r['wall_range_s'][0]:.3f}-"
            f"{r['wall_range_s'][1]:.3f} s, floor {r['floor_wall_range_s'][0]:.3f}-"
            f"{r['floor_wall_range_s'][1]:.3f} s (median process CPU time: pipeloom "
            f"{r['cpu_s']:.3f} s, floor {r['floor_cpu_s']:.3f} s)"
            for r in through
        )
        + "."
    )
    out += ["", "Raw SQLite on the same disk, same run:", ""]
    out += ["| case | rows | rows/s | note |", "|---|--:|--:|---|"]
    for s in sqlite_rows:
        note = ""
        if "locked_errors" in s:
            note = f"{s['locked_errors']:,} 'database is locked' of {s['attempted']:,} attempts"
        out.append(f"| {s['case']} | {fmt(s['rows'])} | {fmt(s['rows_per_s'])} | {note} |")
    out += ["", "| measurement | figure |", "|---|---|"]
    out.append(
        f"| {memory['tasks']:,} generator tasks | peak RSS {memory['peak_rss_mb']:.0f} MB "
        f"(interpreter + imports before the run: {memory['rss_before_run_mb']:.0f} MB), "
        f"{memory['wall_s']:.1f} s, {fmt(memory['tasks_per_s'])} tasks/s |"
    )
    for s in stale:
        out.append(
            f"| staleness, {s['load']} ({s['tasks']:,} tasks, work {s['work_ms']:g} ms) "
            f"| p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, max {s['max_ms']:.1f} ms |"
        )
    for d in display:
        out.append(
            f"| live display, {d['tasks']:,} x {d['steps']} under a pty "
            f"| on {fmt(d['on_msgs_per_s'])} vs off {fmt(d['off_msgs_per_s'])} msgs/s "
            f"= {d['on_over_off']:.2f} (medians of {d['reps']}) |"
        )
    first = through[0]
    single = through[-1]
    paced = next(s for s in stale if s["load"] == "paced")
    worst_display = min(d["on_over_off"] for d in display)
    targets = [
        *(
            (
                f"{r['tasks']:,} x {r['steps']} user-like msgs/s >= {LIMIT_TARGET}x the limit",
                f"{r['pipeloom']['ratio']:.2f}x",
                r["pipeloom"]["ratio"] >= LIMIT_TARGET,
            )
            for r in limit
        ),
        (
            "1000 x 100 msgs/s >= 4x the floor",
            f"{first['msgs_ratio']:.2f}x",
            first["msgs_ratio"] >= 4,
        ),
        (
            "100,000 x 1 wall <= 0.5x the floor",
            f"{single['wall_ratio']:.2f}x",
            single["wall_ratio"] <= 0.5,
        ),
        (
            "1,000,000 generator tasks peak RSS <= 100 MB",
            f"{memory['peak_rss_mb']:.0f} MB",
            memory["peak_rss_mb"] <= 100,
        ),
        ("staleness p99 <= 100 ms (paced)", f"{paced['p99_ms']:.1f} ms", paced["p99_ms"] <= 100),
        ("live display within 20% of off", f"{worst_display:.2f}", worst_display >= 0.8),
    ]
    out += ["", "| target | this run | met |", "|---|--:|---|"]
    out += [f"| {t} | {v} | {'yes' if ok else '**no**'} |" for t, v, ok in targets]
    out += [
        "",
        f"Whole run: {took:.0f} s; 1-minute load average at the end {load_end:.1f}.",
        "",
        END,
    ]
    return "\n".join(out)


def machine_line() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"Run {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} on {os.cpu_count()} "
        f"cores ({platform.machine()}, {platform.system()}), Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}; 1-minute load average at start {load:.1f} "
        "(the machine is shared)."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-readme", action="store_true", help="print only")
    parser.add_argument(
        "--before",
        type=Path,
        help="another checkout (with its own .venv) to measure beside this one, alternated",
    )
    args = parser.parse_args()
    before = None
    if args.before is not None:
        before = str(args.before.resolve() / ".venv" / "bin" / "python")
        if not os.path.exists(before):
            raise SystemExit(f"--before {args.before}: no {before}; run `uv sync` in it first")
    started = time.perf_counter()
    machine = machine_line()
    sqlite_rows = run("sqlite_ceilings.py")
    limit = limit_rows(args.reps, before)
    through = throughput_rows(args.reps, before)
    memory = run("memory.py")[0]
    stale = run("staleness.py")
    display = run("display.py", "--shape", "10000x10", "--shape", "100000x1", "--reps", "3")
    took = time.perf_counter() - started
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    for row in through:
        print(json.dumps({"bench": "ratio", **row}), flush=True)
    for row in limit:
        print(json.dumps({"bench": "limit_ratio", **row}), flush=True)
    section = render(
        machine,
        limit,
        through,
        sqlite_rows,
        memory,
        stale,
        display,
        args.reps,
        took,
        str(args.before) if args.before else None,
        load_end,
    )
    with RESULTS.open("w", encoding="utf-8") as fh:
        for item in [*sqlite_rows, *limit, *through, memory, *stale, *display]:
            fh.write(json.dumps(item) + "\n")
    if not args.no_readme:
        text = README.read_text(encoding="utf-8")
        if BEGIN not in text or END not in text:
            raise SystemExit(f"{README}: the {BEGIN} ... {END} markers are missing; restore them")
        head, rest = text.split(BEGIN, 1)
        README.write_text(head + section + rest.split(END, 1)[1], encoding="utf-8")
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
