"""The asyncio (anyio) client: the same surface as `Client`, awaited."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
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


class AsyncClient:
    """The toolbox daemon, over its Unix socket, for async code (see `Client`).

    Used in an `async with` block, leaving it cancels the jobs started through it.
    """

    def __init__(
        self, socket: str | os.PathLike[str] | None = None, *, connect_timeout: float = 5.0
    ) -> None:
        self.socket = socket_path(socket)
        self._http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=self.socket),
            base_url="http://toolbox",
            timeout=httpx.Timeout(None, connect=connect_timeout),
        )
        self._started: list[str] = []

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.aclose(cancel_started=True)

    async def aclose(self, *, cancel_started: bool = False) -> None:
        """Close the connections; `cancel_started`: first cancel the jobs started here."""
        if cancel_started:
            for job_id in self._started:
                try:
                    await self.cancel(job_id)
                except DaemonError:
                    pass  # ended already, or expired
                except DaemonUnavailable:
                    break
            self._started.clear()
        await self._http.aclose()

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        try:
            response = await self._http.request(
                method, path, json=json, content=content, params=params
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as err:
            raise DaemonUnavailable(self.socket, str(err) or type(err).__name__) from None
        except httpx.TransportError as err:
            raise ProtocolError(f"{method} {path}: {err}") from None
        if response.status_code >= 300:
            raise error_from(response.status_code, response.content)
        return parse_json(response.content, f"{method} {path}")

    async def health(self) -> dict[str, Any]:
        answer: dict[str, Any] = await self._send("GET", "/v1/health")
        return answer

    async def jobs(self) -> list[JobInfo]:
        return [job_info(item) for item in (await self._send("GET", "/v1/jobs"))["jobs"]]

    async def cancel(self, job_id: str) -> None:
        await self._send("DELETE", f"/v1/jobs/{job_id}")

    def job(self, job_id: str) -> AsyncJob:
        return AsyncJob(self, job_id)

    async def _events(
        self, path: str, body: dict[str, Any], on_stdout: Callback, on_stderr: Callback
    ) -> AsyncGenerator[Event, None]:
        gatherer = Gatherer(on_stdout, on_stderr)
        try:
            async with self._http.stream("POST", path, json=body) as response:
                if response.status_code != 200:
                    raise error_from(response.status_code, await response.aread())
                async for data in response.aiter_bytes():
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
    ) -> AsyncGenerator[Event, None]:
        """A job's events as they come (see `Client.stream`). To leave early and cancel
        the job at once, close it: `async with contextlib.aclosing(client.stream(...))`."""
        body = job_body(
            argv, cwd=cwd, env=env, stdin=stdin, policy=policy, network=network,
            allow=allow, timeout=timeout, limits=limits, detach=False,
        )  # fmt: skip
        return self._events("/v1/jobs", body, None, None)

    async def run(
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
        """Run a job to its end and return its result (see `Client.run`)."""
        body = job_body(
            argv, cwd=cwd, env=env, stdin=stdin, policy=policy, network=network,
            allow=allow, timeout=timeout, limits=limits, detach=False,
        )  # fmt: skip
        return await _finish(self._events("/v1/jobs", body, on_stdout, on_stderr), check)

    async def start(
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
    ) -> AsyncJob:
        """Start a job that lives on its own (see `Client.start`)."""
        body = job_body(
            argv, cwd=cwd, env=env, stdin=stdin, policy=policy, network=network,
            allow=allow, timeout=timeout, limits=limits, detach=True,
        )  # fmt: skip
        return await self._start("/v1/jobs", body)

    async def _start(self, path: str, body: dict[str, Any]) -> AsyncJob:
        answer = await self._send("POST", path, json=body)
        job_id = str(answer["job_id"])
        self._started.append(job_id)
        return AsyncJob(self, job_id)


async def _finish(events: AsyncIterator[Event], check: bool) -> Result:
    async for event in events:
        if isinstance(event, Exit):
            if check and not event.result.ok:
                raise JobFailed(event.result)
            return event.result
    raise ProtocolError("the daemon ended the job's stream before its result")


class AsyncJob:
    """A started job, for async code (see `Job`)."""

    def __init__(self, client: AsyncClient, job_id: str) -> None:
        self.client = client
        self.id = job_id
        self._cursor = Cursor()

    def __repr__(self) -> str:
        return f"AsyncJob({self.id!r})"

    async def read(self, wait: float = 0.0) -> JobOutput:
        answer = await self.client._send(
            "GET", f"/v1/jobs/{self.id}/output", params=self._cursor.params(wait)
        )
        stdout, stderr, done, dropped = self._cursor.take(answer)
        return JobOutput(stdout, stderr, done, dropped)

    async def write_stdin(self, data: str | bytes, *, close: bool = False) -> int:
        content = data.encode() if isinstance(data, str) else bytes(data)
        answer = await self.client._send(
            "POST",
            f"/v1/jobs/{self.id}/stdin",
            content=content,
            params={"close": "true" if close else "false"},
        )
        return int(answer["written"])

    async def close_stdin(self) -> None:
        await self.write_stdin(b"", close=True)

    async def kill(self) -> None:
        try:
            await self.client.cancel(self.id)
        except DaemonError as err:
            if err.code != "job_ended":
                raise

    async def info(self) -> JobInfo:
        return job_info(await self.client._send("GET", f"/v1/jobs/{self.id}"))

    async def wait(self, timeout: float | None = None) -> Result:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 30.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"job {self.id} still runs after {timeout} s")
            if (await self.read(wait=min(left, 30.0))).done:
                break
        record = (await self.client._send("GET", f"/v1/jobs/{self.id}")).get("result")
        if not isinstance(record, dict):
            raise ProtocolError(f"job {self.id} ended without a record")
        return result_from(
            record, bytes(self._cursor.seen["stdout"]), bytes(self._cursor.seen["stderr"])
        )

    async def run(
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
        body = job_body(
            argv, cwd=cwd, env=env, stdin=stdin, policy=None, network=None, allow=None,
            timeout=timeout, limits=None, detach=False, inside_job=True,
        )  # fmt: skip
        events = self.client._events(f"/v1/jobs/{self.id}/exec", body, on_stdout, on_stderr)
        return await _finish(events, check)

    async def start(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: str | bytes | None = None,
        timeout: Duration | None = None,
    ) -> AsyncJob:
        body = job_body(
            argv, cwd=cwd, env=env, stdin=stdin, policy=None, network=None, allow=None,
            timeout=timeout, limits=None, detach=True, inside_job=True,
        )  # fmt: skip
        return await self.client._start(f"/v1/jobs/{self.id}/exec", body)
