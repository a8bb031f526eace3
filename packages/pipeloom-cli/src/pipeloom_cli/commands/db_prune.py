"""``pipeloom db prune DB``: delete old runs (retention), and give their space back.

What is kept on purpose (live runs, each pipeline's latest run, runs a kept run resumed
from, runs an application's table references) is said by `pipeloom.retention`; this
command prints it, so ``--dry-run`` answers "what would go, and why not the rest".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeloom._text import printable
from pipeloom_cli._dbfile import file_size
from pipeloom_cli._errors import UsageError, user_errors
from pipeloom_cli._options import MAX_ID, age_in_days, number

__all__ = ["prune"]

DbArg = Annotated[Path, typer.Argument(help="The run database file.", show_default=False)]


def prune(
    db: DbArg,
    keep_runs: Annotated[
        int | None,
        number(
            "--keep-runs",
            low=1,
            high=MAX_ID,
            metavar="N",
            help="Keep the newest N runs of each pipeline; delete older ones.",
        ),
    ] = None,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            metavar="AGE",
            help="Delete runs started more than AGE ago (30d, 12h, 2w). With --keep-runs, "
            "a run goes only when both say so.",
            show_default=False,
        ),
    ] = None,
    pipeline: Annotated[
        str | None,
        typer.Option("--pipeline", metavar="NAME", help="Only runs of this pipeline."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would be deleted; delete nothing.")
    ] = False,
    do_vacuum: Annotated[
        bool,
        typer.Option(
            "--vacuum",
            help="Then give the freed space back to the file system (refused while a run is "
            "live, unless the file uses incremental auto_vacuum).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Delete old runs: their tasks, attempts, logs and dead letters, never a live run.

    Each pipeline's latest run (resume reads it), runs a kept run resumed from, and runs a
    table of yours references are kept; tables pipeloom did not create are never touched.
    Deletes in short transactions, so a run writing the same file is not held up.
    """
    from pipeloom.retention import Retention, file_bytes, vacuum
    from pipeloom.retention import prune as run_prune

    with user_errors():
        if keep_runs is None and older_than is None and not do_vacuum:
            raise UsageError("db prune: say what to delete: --keep-runs N and/or --older-than 30d")
        days = age_in_days("--older-than", older_than)
        policy = Retention(keep_runs, days, pipeline)
        before = file_bytes(db)
        result = run_prune(db, policy, dry_run=dry_run)
        space: tuple[int, int] | None = None
        if do_vacuum and not dry_run:
            space = vacuum(db)
    plan = result.plan
    if as_json:
        doc = {
            "db": str(db),
            "dry_run": dry_run,
            "runs": [run.id for run in plan.runs],
            "kept": {str(k): v for k, v in sorted(plan.kept.items())},
            "rows": plan.rows,
            "deleted": result.deleted,
            "transactions": result.transactions,
            "longest_transaction_s": round(result.longest_hold_s, 4),
            "elapsed_s": round(result.elapsed_s, 3),
            "bytes_before": before,
            "bytes_after": space[1] if space else file_bytes(db),
        }
        typer.echo(json.dumps(doc, indent=2))
        return
    verb = "would delete" if dry_run else "deleted"
    label = printable(db)
    if not plan.runs and not plan.orphans:
        typer.echo(f"{label}: nothing to delete")
    else:
        rows = ", ".join(f"{table} {n}" for table, n in plan.rows.items() if n)
        typer.echo(f"{label}: {verb} {len(plan.runs)} run(s) ({rows})")
        for run in plan.runs[:20]:
            typer.echo(
                f"  run {run.id}  {printable(run.name)}  {run.status}  started {run.started_at}"
            )
        if len(plan.runs) > 20:
            typer.echo(f"  ... and {len(plan.runs) - 20} more")
        if plan.orphans:
            typer.echo(f"  rows of {len(plan.orphans)} run(s) an earlier prune left half done")
    for run_id, why in sorted(plan.kept.items()):
        typer.echo(f"kept run {run_id}: {printable(why)}")
    if not dry_run and result.transactions:
        typer.echo(
            f"{result.transactions} transaction(s), longest {result.longest_hold_s * 1000:.0f} ms, "
            f"{result.elapsed_s:.1f} s in all"
        )
    if space is not None:
        typer.echo(f"vacuum: {file_size(space[0])} -> {file_size(space[1])}")
    elif not dry_run and result.deleted.get("pipeline_runs"):
        typer.echo(
            f"file: {file_size(before)}; the freed pages are reused by new runs "
            "(--vacuum gives them back to the file system)"
        )
