"""`toolbox serve` on a socket of its own, for the Python tests and the client benchmark.

It runs as root, as in production, in a cgroup of its own beneath this process's (on a v1
host, `<own>/<unit>` in each hierarchy toolbox uses; on a unified host toolbox places itself).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "cpuset")


class DaemonFailed(RuntimeError):
    """The daemon did not come up."""


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

    def __init__(self, toolbox: Path, directory: Path, *options: str) -> None:
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
            [str(toolbox), "serve", "--socket", self.socket,
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
                raise DaemonFailed(
                    f"the daemon did not start listening; its log:\n{self.log_text()}"
                )
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
