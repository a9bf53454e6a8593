"""What the sync and async clients share: request bodies, and reading answers and events.
No I/O here; the two clients differ only in how they wait."""

from __future__ import annotations

import base64
import codecs
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ._types import (
    DaemonError,
    Event,
    Exit,
    JobInfo,
    Output,
    ProtocolError,
    Queued,
    Result,
    Started,
    Truncated,
)

DEFAULT_SOCKET = "/run/toolbox/toolbox.sock"

Duration = float | int | str
"""Seconds, or the daemon's own form: "500ms", "30s", "5m"."""

Callback = Callable[[str], object] | None

#: The longest one read of a job's output waits at the daemon (it caps `wait` there).
MAX_READ_WAIT = 30.0


def socket_path(socket: str | os.PathLike[str] | None) -> str:
    """The socket named, else $TOOLBOX_SOCKET, else the default one."""
    if socket is not None:
        return os.fspath(socket)
    return os.environ.get("TOOLBOX_SOCKET") or DEFAULT_SOCKET


def duration(value: Duration, name: str) -> str:
    """A duration as the daemon reads it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"{name}: seconds (a number) or a duration such as '30s'")
    if isinstance(value, str):
        return value
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"{name}: {value!r} is not a positive number of seconds")
    return f"{max(1, round(value * 1000))}ms"


def job_body(
    argv: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None,
    stdin: str | bytes | None,
    policy: str | None,
    network: str | None,
    allow: Sequence[str] | None,
    timeout: Duration | None,
    limits: Mapping[str, Any] | None,
    detach: bool,
    inside_job: bool = False,
) -> dict[str, Any]:
    """The JSON body of a job request (or, `inside_job`, of an exec into a job)."""
    if isinstance(argv, (str, bytes)) or not isinstance(argv, Sequence):
        raise TypeError("argv is a list of strings; for a shell line use ['sh', '-c', line]")
    if not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError("argv: give the command and its arguments, as strings")
    body: dict[str, Any] = {"argv": list(argv)}
    if inside_job:
        if cwd is not None:
            body["cwd"] = os.fspath(cwd)
    else:
        # The daemon knows nothing of our directory: the workspace goes as an absolute path.
        body["cwd"] = os.path.abspath(os.fspath(cwd) if cwd is not None else os.getcwd())
    if env:
        body["env"] = dict(env)
    if isinstance(stdin, str):
        body["stdin"] = stdin
    elif isinstance(stdin, (bytes, bytearray)):
        body["stdin_base64"] = base64.b64encode(stdin).decode()
    elif stdin is not None:
        raise TypeError("stdin: str or bytes")
    if policy is not None:
        body["policy"] = policy
    if network is not None:
        body["network"] = network
    if allow is not None:
        if isinstance(allow, (str, bytes)):
            raise TypeError("allow is a list of rules: ['pypi.org', '*.github.com:443']")
        body["allow"] = list(allow)
    all_limits = dict(limits or {})
    if timeout is not None:
        all_limits["timeout"] = duration(timeout, "timeout")
    if all_limits:
        body["limits"] = all_limits
    if detach:
        body["detach"] = True
    return body


def error_from(status: int, content: bytes) -> DaemonError:
    """The daemon's refusal (`{"error": {code, message, field}}`), as an exception."""
    try:
        error = json.loads(content)["error"]
        return DaemonError(status, str(error["code"]), str(error["message"]), error.get("field"))
    except (ValueError, KeyError, TypeError):
        text = content[:200].decode("utf-8", "replace")
        return DaemonError(status, "unknown", text or f"HTTP {status}")


def parse_json(content: bytes, what: str) -> Any:
    try:
        return json.loads(content)
    except ValueError as err:
        raise ProtocolError(f"{what}: not JSON: {err}") from None


def payload(item: Mapping[str, Any]) -> bytes:
    """The bytes of an output event or chunk: `text`, or `base64` for bytes not UTF-8."""
    if "text" in item:
        return str(item["text"]).encode()
    if "base64" in item:
        return base64.b64decode(item["base64"])
    return b""


def result_from(record: Mapping[str, Any], stdout: bytes, stderr: bytes) -> Result:
    record = {k: v for k, v in record.items() if k != "type"}
    try:
        return Result(
            job_id=str(record["job_id"]),
            status=record["status"],
            exit_code=int(record["exit_code"]),
            signal=record.get("signal"),
            duration_ms=int(record["duration_ms"]),
            stdout=stdout,
            stderr=stderr,
            stdout_truncated=bool(record.get("stdout_truncated", False)),
            stderr_truncated=bool(record.get("stderr_truncated", False)),
            reason=record.get("reason"),
            error=record.get("error"),
            record=record,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ProtocolError(f"a result record without {err}") from None


def job_info(item: Mapping[str, Any]) -> JobInfo:
    return JobInfo(
        job_id=str(item["job_id"]),
        state=item["state"],
        argv=list(item.get("argv", [])),
        policy=str(item.get("policy", "")),
        detached=bool(item.get("detached", False)),
        exec_of=item.get("exec_of"),
        elapsed_ms=int(item.get("elapsed_ms", 0)),
        position=item.get("position"),
        peer_uid=int(item.get("peer_uid", -1)),
        result=item.get("result"),
    )


class Gatherer:
    """Turns a job's event lines into typed events, keeping its output for the result and
    handing it, decoded, to the callbacks as it comes."""

    def __init__(self, on_stdout: Callback = None, on_stderr: Callback = None) -> None:
        self.out = {"stdout": bytearray(), "stderr": bytearray()}
        self._callbacks = {"stdout": on_stdout, "stderr": on_stderr}
        # A character cut between two events is decoded whole.
        self._decoders = {
            name: codecs.getincrementaldecoder("utf-8")(errors="replace") for name in self.out
        }
        self._pending = b""

    def feed(self, data: bytes) -> list[Event]:
        """The events complete in the stream so far. (Splitting lines here, on bytes, costs
        a third of what httpx's `iter_lines` does, per job.)"""
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        return [self.event(line) for line in lines if line]

    def _emit(self, stream: str, data: bytes, final: bool = False) -> None:
        callback = self._callbacks[stream]
        if callback is not None:
            text = self._decoders[stream].decode(data, final)
            if text:
                callback(text)

    def event(self, line: bytes | str) -> Event:
        item = parse_json(line if isinstance(line, bytes) else line.encode(), "an event")
        if not isinstance(item, dict):
            raise ProtocolError(f"an event that is not an object: {item!r}")
        kind = item.get("type")
        if kind == "stdout" or kind == "stderr":
            data = payload(item)
            self.out[kind] += data
            self._emit(kind, data)
            return Output(kind, data)
        if kind == "truncated":
            stream = item["stream"]
            return Truncated(stream, int(item["dropped_bytes"]), int(item["kept_bytes"]))
        if kind == "queued":
            return Queued(str(item["job_id"]), int(item["position"]))
        if kind == "started":
            return Started(str(item["job_id"]))
        if kind == "exit":
            for stream in self.out:
                self._emit(stream, b"", final=True)
            return Exit(result_from(item, bytes(self.out["stdout"]), bytes(self.out["stderr"])))
        raise ProtocolError(f"an event of unknown type {kind!r}")


class Cursor:
    """Where reading a started job's output got to, and everything read so far."""

    def __init__(self) -> None:
        self.next = {"stdout": 0, "stderr": 0}
        self.seen = {"stdout": bytearray(), "stderr": bytearray()}

    def params(self, wait: float) -> dict[str, str]:
        if wait < 0:
            raise ValueError("wait: zero or more seconds")
        return {
            "stdout_since": str(self.next["stdout"]),
            "stderr_since": str(self.next["stderr"]),
            "wait": f"{round(min(wait, MAX_READ_WAIT) * 1000)}ms",
        }

    def take(self, answer: Mapping[str, Any]) -> tuple[bytes, bytes, bool, int]:
        """One `GET …/output` answer: (stdout, stderr, done, bytes dropped in between)."""
        new: dict[str, bytes] = {}
        dropped = 0
        for stream in ("stdout", "stderr"):
            part = answer[stream]
            data = bytearray()
            for chunk in part["chunks"]:
                if "dropped_bytes" in chunk:
                    dropped += int(chunk["dropped_bytes"])
                else:
                    data += payload(chunk)
            self.next[stream] = int(part["next"])
            self.seen[stream] += data
            new[stream] = bytes(data)
        return new["stdout"], new["stderr"], bool(answer["done"]), dropped
