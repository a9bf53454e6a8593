"""What the daemon answers, as Python values: results, events, jobs, and errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["exited", "signaled", "timeout", "oom", "cancelled", "setup_error"]
StreamName = Literal["stdout", "stderr"]
JobState = Literal["queued", "running", "ended"]


class ToolboxError(Exception):
    """Every error this client raises."""


class DaemonUnavailable(ToolboxError):
    """Nothing answers at the daemon's socket."""

    def __init__(self, socket: str, reason: str) -> None:
        self.socket = socket
        self.reason = reason
        super().__init__(
            f"cannot reach the toolbox daemon at {socket} ({reason}); start it (`toolbox serve`) "
            "or name its socket (Client(socket=...) or $TOOLBOX_SOCKET)"
        )


class DaemonError(ToolboxError):
    """The daemon refused a request: its HTTP status, error code, message and field."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        where = f"{field}: " if field else ""
        super().__init__(f"{where}{message} ({status} {code})")


class ProtocolError(ToolboxError):
    """The daemon's answer was not what its API promises (or the connection broke)."""


class JobFailed(ToolboxError):
    """`check=True` and the job did not exit 0."""

    def __init__(self, result: Result) -> None:
        self.result = result
        detail = f": {result.reason or result.error}" if (result.reason or result.error) else ""
        super().__init__(
            f"job {result.job_id} {result.status} with exit code {result.exit_code}{detail}"
        )


@dataclass(frozen=True)
class Result:
    """How a job ended (its result record), with the output gathered from it."""

    job_id: str
    status: Status
    exit_code: int
    signal: int | None
    duration_ms: int
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    reason: str | None
    error: str | None
    record: dict[str, Any] = field(repr=False)
    """The whole record as the daemon sent it: usage, limits, what isolation was enforced."""

    @property
    def ok(self) -> bool:
        """It exited, with code 0."""
        return self.status == "exited" and self.exit_code == 0

    @property
    def stdout_text(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def stderr_text(self) -> str:
        return self.stderr.decode("utf-8", "replace")

    @property
    def memory_peak_bytes(self) -> int:
        return int(self.record.get("memory_peak_bytes", 0))

    @property
    def isolation(self) -> dict[str, Any]:
        """What was enforced: namespaces, cgroup and limits, Landlock, seccomp, ids."""
        value = self.record.get("isolation", {})
        return value if isinstance(value, dict) else {}

    @property
    def egress(self) -> dict[str, Any] | None:
        """What went through the job's egress proxy (network "allowlist", or a refused
        try in "none"): counts, bytes, and each connection with its decision."""
        value = self.record.get("egress")
        return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class Queued:
    """The job waits for a slot."""

    job_id: str
    position: int


@dataclass(frozen=True)
class Started:
    """The job has a slot and its jail; its command runs."""

    job_id: str


@dataclass(frozen=True)
class Output:
    """A piece of the job's output, as the tool wrote it."""

    stream: StreamName
    data: bytes

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


@dataclass(frozen=True)
class Truncated:
    """The output limit dropped `dropped_bytes` here; the last `kept_bytes` follow."""

    stream: StreamName
    dropped_bytes: int
    kept_bytes: int


@dataclass(frozen=True)
class Exit:
    """The job ended: its result, the last event."""

    result: Result


Event = Queued | Started | Output | Truncated | Exit


@dataclass(frozen=True)
class JobOutput:
    """What a started job wrote since the last read."""

    stdout: bytes
    stderr: bytes
    done: bool
    """The job ended and everything it wrote has been read."""
    dropped_bytes: int = 0
    """Bytes the output limit dropped between the reads."""

    @property
    def stdout_text(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def stderr_text(self) -> str:
        return self.stderr.decode("utf-8", "replace")


@dataclass(frozen=True)
class JobInfo:
    """One of the caller's jobs, as `jobs()` lists it."""

    job_id: str
    state: JobState
    argv: list[str]
    policy: str
    detached: bool
    exec_of: str | None
    elapsed_ms: int
    position: int | None
    peer_uid: int
    result: dict[str, Any] | None = field(default=None, repr=False)
