"""A real toolbox daemon for the Python client's and the MCP server's tests.

The daemon is the one `cargo build` made (TOOLBOX_BIN_DIR, default the musl debug build);
it runs as root, as in production, in a cgroup of its own beneath this process's, and its
jobs run as TOOL_UID, the owner of each test's workspace.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = Path(
    os.environ.get("TOOLBOX_BIN_DIR", REPO / "target" / "x86_64-unknown-linux-musl" / "debug")
)
TOOL_UID = 65534
V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "cpuset")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def require_root() -> None:
    """The daemon builds real jails: root. Lacking it fails under CI, skips loudly here."""
    if os.geteuid() == 0:
        return
    message = "the toolbox daemon's tests need root (they build real jails)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    print(f"\n!! SKIPPED: {message}")
    pytest.skip(message)


def toolbox_binary(name: str) -> Path:
    path = BIN_DIR / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: cargo build -p toolbox -p toolbox-shim -p toolbox-mcp")
    return path


def v1_unit_cgroups(unit: str) -> list[Path]:
    """`<own>/<unit>` in each v1 hierarchy toolbox uses (none on a unified host)."""
    dirs = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        first = next((c for c in controllers.split(",") if c in V1_CONTROLLERS), None)
        if first:
            dirs.append(Path("/sys/fs/cgroup") / first / path.lstrip("/") / unit)
    return dirs


class Daemon:
    """`toolbox serve` on a socket of its own."""

    def __init__(self, directory: Path, *options: str) -> None:
        self.dir = directory
        self.socket = str(directory / "toolbox.sock")
        self.audit = directory / "audit.jsonl"
        self.cgroups = v1_unit_cgroups(f"pytest-daemon-{directory.name}")
        procs = []
        for cgroup in self.cgroups:
            cgroup.mkdir(exist_ok=True)
            if "cpuset" in cgroup.parts:
                for name in ("cpuset.cpus", "cpuset.mems"):
                    if not (cgroup / name).read_text().strip():
                        (cgroup / name).write_text((cgroup.parent / name).read_text().strip())
            procs.append(str(cgroup / "cgroup.procs"))

        def enter_cgroups() -> None:
            for path in procs:
                with open(path, "w") as f:
                    f.write("0")

        self.log = open(directory / "daemon.log", "wb")  # noqa: SIM115 (kept until stop)
        self.process = subprocess.Popen(
            [str(toolbox_binary("toolbox")), "serve", "--socket", self.socket,
             "--audit-log", str(self.audit), *options],
            env={**os.environ, "TOOLBOX_LOG": "info"},
            stdin=subprocess.DEVNULL,
            stderr=self.log,
            preexec_fn=enter_cgroups,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not self.answers():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                pytest.fail(f"the daemon did not start listening; its log:\n{self.log_text()}")
            time.sleep(0.02)

    def answers(self) -> bool:
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(self.socket)
                return True
            except OSError:
                return False

    def log_text(self) -> str:
        return (self.dir / "daemon.log").read_text(errors="replace")

    def audit_lines(self) -> list[dict[str, Any]]:
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines() if line]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        for cgroup in self.cgroups:
            for _ in range(100):
                try:
                    cgroup.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)


@pytest.fixture(scope="session")
def daemon() -> Iterator[Daemon]:
    require_root()
    directory = Path(tempfile.mkdtemp(prefix="toolbox-pytest-"))
    running = Daemon(directory)
    yield running
    running.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def workspace() -> Iterator[Path]:
    """A fresh workspace, owned by the uid the daemon's jobs then run as."""
    directory = Path(tempfile.mkdtemp(prefix="toolbox-ws-"))
    os.chown(directory, TOOL_UID, TOOL_UID)
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def wait_until(condition: Any, timeout: float = 10.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.05)
