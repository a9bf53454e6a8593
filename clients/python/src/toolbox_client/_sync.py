"""The blocking client."""

from __future__ import annotations

import os
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx

from ._types import (
    DaemonError,
    DaemonUnavailable,
    Event,
    Exit,
    JobFailed,
    JobInfo,
    JobOutput,
    ProtocolError,
    Result,
)
from ._wire import (
    Callback,
    Cursor,
    Duration,
    Gatherer,
    error_from,
    job_body,
    job_info,
    parse_json,
    result_from,
    socket_path,
)


class Client:
    """The toolbox daemon, over its Unix socket.

    `socket`: the daemon's socket (default: $TOOLBOX_SOCKET, else /run/toolbox/toolbox.sock).
    `connect_timeout`: how long to wait for the daemon to take the connection. A job's own
    limit is its `timeout`; nothing here cuts a job's stream short.

    Used in a `with` block, leaving it cancels the jobs started through it that still run.
    """

    def __init__(
        self, socket: str | os.PathLike[str] | None = None, *, connect_timeout: float = 5.0
    ) -> None:
        self.socket = socket_path(socket)
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=self.socket),
            base_url="http://toolbox",
            timeout=httpx.Timeout(None, connect=connect_timeout),
        )
        self._started: list[str] = []

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close(cancel_started=True)

    def close(self, *, cancel_started: bool = False) -> None:
        """Close the connections; `cancel_started`: first cancel the jobs started here."""
        if cancel_started:
            for job_id in self._started:
                try:
                    self.cancel(job_id)
                except DaemonError:
                    pass  # ended already, or expired
                except DaemonUnavailable:
                    break
            self._started.clear()
        self._http.close()

    def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        try:
            response = self._http.request(method, path, json=json, content=content, params=params)
        except (httpx.ConnectError, httpx.ConnectTimeout) as err:
            raise DaemonUnavailable(self.socket, str(err) or type(err).__name__) from None
        except httpx.TransportError as err:
            raise ProtocolError(f"{method} {path}: {err}") from None
        if response.status_code >= 300:
            raise error_from(response.status_code, response.content)
        return parse_json(response.content, f"{method} {path}")

    def health(self) -> dict[str, Any]:
        """The daemon's liveness, load, and what its host enforces."""
        answer: dict[str, Any] = self._send("GET", "/v1/health")
        return answer

    def jobs(self) -> list[JobInfo]:
        """Your jobs: queued, running, and started ones kept a while after their end."""
        return [job_info(item) for item in self._send("GET", "/v1/jobs")["jobs"]]

    def cancel(self, job_id: str) -> None:
        """Cancel a job: SIGTERM to all its processes, SIGKILL after its grace."""
        self._send("DELETE", f"/v1/jobs/{job_id}")

    def job(self, job_id: str) -> Job:
        """A handle on a started job, by id."""
        return Job(self, job_id)

    def _events(
        self, path: str, body: dict[str, Any], on_stdout: Callback, on_stderr: Callback
    ) -> Generator[Event, None, None]:
        gatherer = Gatherer(on_stdout, on_stderr)
        try:
            with self._http.stream("POST", path, json=body) as response:
                if response.status_code != 200:
                    raise error_from(response.status_code, response.read())
                for data in response.iter_bytes():
                    for event in gatherer.feed(data):
                        yield event
                        if isinstance(event, Exit):
                            return
        except (httpx.ConnectError, httpx.ConnectTimeout) as err:
            raise DaemonUnavailable(self.socket, str(err) or type(err).__name__) from None
        except httpx.TransportError as err:
            raise ProtocolError(f"the job's stream broke off: {err}") from None
        raise ProtocolError("the daemon ended the job's stream before its result")

    def stream(
        self,
        argv: Sequence[str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        stdin: str | bytes | None = None,
        policy: str | None = None,
        network: str | None = None,
        allow: Sequence[str] | None = None,
        timeout: Duration | None = None,
        limits: Mapping[str, Any] | None = None,
    ) -> Generator[Event, None, None]:
        """Run a job and yield its events as they come: `Queued`, `Started`, `Output`,
        `Truncated`, and last `Exit` with its result. Leaving the loop early cancels it."""
        body = job_body(
            argv, cwd=cwd, env=env, stdin=stdin, policy=policy, network=network,
            allow=allow, timeout=timeout, limits=limits, detach=False,
        )  # fmt: skip
        return self._events("/v1/jobs", body, None, None)

    def run(
        self,
        argv: Sequence[str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        stdin: str | bytes | None = None,
        policy: str | None = None,
        network: str | None = None,
        allow: Sequence[str] | None = None,
        timeout: Duration | None = None,
        limits: Mapping[str, Any] | None = None,
        on_stdout: Callback = None,
        on_stderr: Callback = None,
        check: bool = False,
    ) -> Result:
        """Run a job to its end and return its result, output included.

        `cwd` is the workspace (default: the current directory), bound read-write.
        `network`: "none", "loopback", "allowlist" or "host", as far as the policy allows;
        `allow`: egress rules in place of the policy's ("pypi.org", "*.github.com",
        "10.0.0.5:8080"), implying "allowlist". `timeout`: seconds or "5m", at most what
        the policy allows. `on_stdout` and
        `on_stderr` get the output as text while it comes. A non-zero exit is a result;
        with `check=True` it raises `JobFailed`. A refused request raises `DaemonError`.
        """
        body = job_body(
            argv, cwd=cwd, env=env, stdin=stdin, policy=policy, network=network,
            allow=allow, timeout=timeout, limits=limits, detach=False,
        )  # fmt: skip
        return _finish(self._events("/v1/jobs", body, on_stdout, on_stderr), check)

    def start(
        self,
        argv: Sequence[str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        stdin: str | bytes | None = None,
        policy: str | None = None,
        network: str | None = None,
        allow: Sequence[str] | None = None,
        timeout: Duration | None = None,
        limits: Mapping[str, Any] | None = None,
    ) -> Job:
        """Start a job that lives on its own (a server, a REPL): a handle to read its
        output, write its stdin, kill it and wait for it. It ends at its timeout at the
        latest, and when the `with` block of this client ends."""
        body = job_body(
            argv, cwd=cwd, env=env, stdin=stdin, policy=policy, network=network,
            allow=allow, timeout=timeout, limits=limits, detach=True,
        )  # fmt: skip
        return self._start("/v1/jobs", body)

    def _start(self, path: str, body: dict[str, Any]) -> Job:
        answer = self._send("POST", path, json=body)
        job_id = str(answer["job_id"])
        self._started.append(job_id)
        return Job(self, job_id)


def _finish(events: Iterator[Event], check: bool) -> Result:
    for event in events:
        if isinstance(event, Exit):
            if check and not event.result.ok:
                raise JobFailed(event.result)
            return event.result
    raise ProtocolError("the daemon ended the job's stream before its result")


class Job:
    """A started job: read its output, write its stdin, run more in its jail, end it."""

    def __init__(self, client: Client, job_id: str) -> None:
        self.client = client
        self.id = job_id
        self._cursor = Cursor()

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    def read(self, wait: float = 0.0) -> JobOutput:
        """What it wrote since the last read; waits up to `wait` seconds (at most 30) for
        something new, and answers as soon as there is."""
        answer = self.client._send(
            "GET", f"/v1/jobs/{self.id}/output", params=self._cursor.params(wait)
        )
        stdout, stderr, done, dropped = self._cursor.take(answer)
        return JobOutput(stdout, stderr, done, dropped)

    def write_stdin(self, data: str | bytes, *, close: bool = False) -> int:
        """Write to its stdin (as it is: a line needs its newline); returns bytes written."""
        content = data.encode() if isinstance(data, str) else bytes(data)
        answer = self.client._send(
            "POST",
            f"/v1/jobs/{self.id}/stdin",
            content=content,
            params={"close": "true" if close else "false"},
        )
        return int(answer["written"])

    def close_stdin(self) -> None:
        self.write_stdin(b"", close=True)

    def kill(self) -> None:
        """End it and everything it started (SIGTERM, then SIGKILL after its grace)."""
        try:
            self.client.cancel(self.id)
        except DaemonError as err:
            if err.code != "job_ended":
                raise

    def info(self) -> JobInfo:
        return job_info(self.client._send("GET", f"/v1/jobs/{self.id}"))

    def wait(self, timeout: float | None = None) -> Result:
        """Wait for its end (raising TimeoutError after `timeout` seconds) and return its
        result, with all the output read through this handle."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 30.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"job {self.id} still runs after {timeout} s")
            if self.read(wait=min(left, 30.0)).done:
                break
        record = self.client._send("GET", f"/v1/jobs/{self.id}").get("result")
        if not isinstance(record, dict):
            raise ProtocolError(f"job {self.id} ended without a record")
        return result_from(
            record, bytes(self._cursor.seen["stdout"]), bytes(self._cursor.seen["stderr"])
        )

    def run(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: str | bytes | None = None,
        timeout: Duration | None = None,
        on_stdout: Callback = None,
        on_stderr: Callback = None,
        check: bool = False,
    ) -> Result:
        """Run another command inside this job's jail (its files, /tmp, localhost, limits)."""
        body = job_body(
            argv, cwd=cwd, env=env, stdin=stdin, policy=None, network=None, allow=None,
            timeout=timeout, limits=None, detach=False, inside_job=True,
        )  # fmt: skip
        events = self.client._events(f"/v1/jobs/{self.id}/exec", body, on_stdout, on_stderr)
        return _finish(events, check)

    def start(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: str | bytes | None = None,
        timeout: Duration | None = None,
    ) -> Job:
        """Start another command inside this job's jail, as `Client.start`."""
        body = job_body(
            argv, cwd=cwd, env=env, stdin=stdin, policy=None, network=None, allow=None,
            timeout=timeout, limits=None, detach=True, inside_job=True,
        )  # fmt: skip
        return self.client._start(f"/v1/jobs/{self.id}/exec", body)
