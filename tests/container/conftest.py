"""Fixtures for the container tests: the image, built once per session, and podman."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tests.container._podman import BUILD_SCRIPT, IMAGE, Podman, missing_tools, podman_env


@pytest.fixture(scope="session")
def image() -> str:
    """Build the image with deploy/build-image.sh (cached: quick when nothing changed)."""
    missing = missing_tools()
    if missing:
        pytest.skip(
            f"the container tests need {', '.join(missing)} (apt-get install podman runc "
            "debootstrap)"
        )
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--tag", IMAGE],
        env=podman_env(),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"{BUILD_SCRIPT} exited {proc.returncode}:\n{proc.stderr[-6000:]}")
    return IMAGE


@pytest.fixture
def podman() -> Iterator[Podman]:
    """podman for one test; its containers get names unique to this run and are removed."""
    helper = Podman(f"pipeloom-test-{uuid.uuid4().hex[:8]}")
    try:
        yield helper
    finally:
        helper.remove_all()
