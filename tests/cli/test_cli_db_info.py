"""``pipeloom db info`` counts a migration in effect whether core or the migrations made it.

Names and versions come from the migration set and `SCHEMA_VERSION`, never written here.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlite_utils import Database

from pipeloom.schema import SCHEMA_VERSION
from pipeloom_observe.migrations import migrations
from tests.cli._cli_support import make_run, make_seed_layout
from tests.e2e._cli_e2e_support import pipeloom

NAMES = [m.name for m in migrations.pending(Database(memory=True))]


def info(db: Path) -> dict[str, str]:
    result = pipeloom("db", "info", str(db), cwd=db.parent)
    assert result.returncode == 0, result.stderr
    fields = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep and not key.startswith(" "):
            fields[key] = value.strip()
    return fields


def test_a_file_core_created_reads_as_fully_migrated(tmp_path: Path) -> None:
    db = tmp_path / "core.db"
    make_run(db, 2)  # core creates the current schema, with no migration record
    fields = info(db)
    assert fields["schema version"].startswith(f"{SCHEMA_VERSION} ")
    assert fields["applied"] == ", ".join(NAMES)
    assert fields["pending"] == "none"
    upgrade = pipeloom("db", "upgrade", str(db), cwd=tmp_path)
    assert upgrade.returncode == 0, upgrade.stderr
    assert "applied " not in upgrade.stdout  # nothing changed, the names were only recorded
    assert upgrade.stdout.splitlines()[-1].endswith(f"already at schema version {SCHEMA_VERSION}")


def test_a_file_the_migrations_made_reads_as_fully_migrated(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    make_seed_layout(db)
    assert info(db)["pending"] == ", ".join(NAMES)
    upgrade = pipeloom("db", "upgrade", str(db), cwd=tmp_path)
    assert upgrade.returncode == 0, upgrade.stderr
    fields = info(db)
    assert (fields["applied"], fields["pending"]) == (", ".join(NAMES), "none")


def test_a_core_file_one_version_behind_has_only_the_last_migration_pending(
    tmp_path: Path,
) -> None:
    db = tmp_path / "behind.db"
    conn = sqlite3.connect(db)
    migrations.apply(Database(conn), stop_before=NAMES[-1])
    conn.execute("DROP TABLE _sqlite_migrations")  # as core leaves it: a version, no record
    conn.commit()
    conn.close()
    fields = info(db)
    assert fields["applied"] == ", ".join(NAMES[:-1])
    assert fields["pending"] == NAMES[-1]


def test_the_schema_history_in_the_docs_names_every_migration() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "observe.md").read_text()
    table = [line for line in doc.splitlines() if line.startswith("| `m")]
    assert [line.split("`")[1] for line in table] == NAMES
