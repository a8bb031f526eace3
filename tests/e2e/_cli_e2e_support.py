"""Running the installed ``pipeloom`` script as a user would, in a clean environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

_BIN = Path(sys.executable).parent


def pipeloom_command() -> list[str]:
    """The installed console script next to this interpreter (``python -m`` as a fallback)."""
    script = shutil.which("pipeloom", path=str(_BIN))
    return [script] if script else [sys.executable, "-m", "pipeloom_cli"]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that forces colour or a terminal width."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES"}
    }
    env.update(extra)
    return env


def pipeloom(
    *args: str, cwd: Path, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``pipeloom ARGS`` in ``cwd`` with stdout and stderr captured (not a terminal)."""
    return subprocess.run(
        [*pipeloom_command(), *args],
        cwd=cwd,
        env=clean_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
