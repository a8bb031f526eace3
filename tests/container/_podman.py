"""Helpers for the container tests: podman with this project's settings, ports, polling."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import _harness as harness

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "deploy" / "build-image.sh"
CONTAINERS_CONF = ROOT / "deploy" / "containers.conf"
IMAGE = os.environ.get("PIPELOOM_TEST_IMAGE", "localhost/pipeloom:test")
"""The tag the tests build and run (a user's ``latest`` is left alone)."""


def podman_env() -> dict[str, str]:
    """The environment podman runs with: runc via deploy/containers.conf where runc exists."""
    env = dict(os.environ)
    if "CONTAINERS_CONF" not in env and Path("/usr/sbin/runc").exists():
        env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    return env


def missing_tools() -> list[str]:
    """What the container tests need and this machine lacks."""
    return [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]


class Podman:
    """Runs podman; every container started through it is removed at teardown."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.names: list[str] = []

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        """Run ``podman ARGS``; return its stdout, or fail the test with its output."""
        proc = subprocess.run(
            ["podman", *args],
            env=podman_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            pytest.fail(
                f"podman {' '.join(args)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc.stdout

    def start(self, role: str, *args: str) -> str:
        """``podman run -d`` a container named PREFIX-ROLE; return its name."""
        name = f"{self.prefix}-{role}"
        self.names.append(name)
        self("run", "-d", "--name", name, *args)
        return name

    def run(self, role: str, *args: str, timeout: float = 120) -> str:
        """``podman run --rm`` a container named PREFIX-ROLE in the foreground; its stdout."""
        name = f"{self.prefix}-{role}"
        self.names.append(name)
        return self("run", "--rm", "--name", name, *args, timeout=timeout)

    def logs(self, name: str) -> str:
        """A container's output, for failure messages."""
        proc = subprocess.run(
            ["podman", "logs", name], env=podman_env(), capture_output=True, text=True, check=False
        )
        return proc.stdout + proc.stderr

    def remove_all(self) -> None:
        """Remove every container this helper started, running or not."""
        if self.names:
            self("rm", "-f", "--volumes", "--time", "0", *self.names, check=False)


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    predicate: Callable[[], bool],
    what: str,
    timeout: float = 60.0,
    explain: Callable[[], str] = lambda: "",
) -> None:
    """`tests._harness.wait_for` at a container's pace (a minute, polled every 0.1 s)."""
    harness.wait_for(predicate, what, timeout, explain=explain, interval=0.1)


def port_open(port: int) -> bool:
    """True once something accepts connections on 127.0.0.1:PORT."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Straight to localhost, whatever proxy the environment names."""


def http_get(url: str) -> tuple[int, bytes]:
    """GET a local URL: (status, body); (0, b"") while nothing answers."""
    try:
        with _DIRECT.open(url, timeout=5) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""
