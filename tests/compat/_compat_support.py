"""Helpers for the compatibility tests: run a script as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path


def run_script(code: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Write ``code`` to ``cwd/script.py`` and run it with this interpreter, warnings as errors."""
    script = cwd / "script.py"
    script.write_text(textwrap.dedent(code), encoding="utf-8")
    env = {**os.environ, "PYTHONWARNINGS": "error", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
