from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["pipeloom_observe", "pipeloom_cli.app"])
def test_datasette_is_not_imported_until_observe_needs_it(module: str) -> None:
    # Importing Datasette takes about a second; `pipeloom run` and `db upgrade` must not pay it.
    code = f"import sys, {module}; print('datasette' in sys.modules)"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip() == "False"


def test_the_lazy_exports_resolve() -> None:
    import pipeloom_observe
    from pipeloom_observe.app import build_datasette, serve

    assert pipeloom_observe.build_datasette is build_datasette
    assert pipeloom_observe.serve is serve
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = pipeloom_observe.nope
