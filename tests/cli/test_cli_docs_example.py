import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeloom_cli.app import app
from tests._harness import query

runner = CliRunner()

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


@pytest.fixture(autouse=True)
def _restore_imports() -> Iterator[None]:
    path, modules = list(sys.path), set(sys.modules)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        del sys.modules[name]


def test_the_documented_target_function_runs_with_pipeloom_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)[0]
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "etl.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", "pipelines/etl.py:main", "--arg", "n=4"])
    assert result.exit_code == 0, result.output
    assert query(tmp_path / "etl.db", "SELECT status, count(*) FROM task_runs GROUP BY status") == [
        ("done", 4)
    ]
    second = runner.invoke(
        app,
        [
            "run",
            "pipelines/etl.py:main",
            "--arg",
            "n=2",
            "--arg",
            "db=b.db",
            "--arg",
            "dry_run=yes",
        ],
    )
    assert second.exit_code == 0, second.output
    assert query(tmp_path / "b.db", "SELECT params FROM pipeline_runs") == [
        ('{"n": 2, "dry_run": true}',)
    ]
