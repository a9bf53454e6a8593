"""The async client against a real daemon: the same surface, awaited."""

from __future__ import annotations

from contextlib import aclosing
from pathlib import Path

import anyio
import pytest

from daemon import Daemon
from toolbox_client import AsyncClient, DaemonError, DaemonUnavailable, Exit, Output

pytestmark = pytest.mark.anyio


async def test_run_stream_and_refusal(daemon: Daemon, workspace: Path) -> None:
    async with AsyncClient(daemon.socket) as toolbox:
        result = await toolbox.run(["sh", "-c", "echo hi; exit 7"], cwd=workspace)
        assert (result.status, result.exit_code, result.stdout) == ("exited", 7, b"hi\n")
        output = b""
        async for event in toolbox.stream(["echo", "streamed"], cwd=workspace):
            if isinstance(event, Output):
                output += event.data
            if isinstance(event, Exit):
                assert event.result.ok
        assert output == b"streamed\n"
        argv = ["sh", "-c", "echo up; exec sleep 60"]
        async with aclosing(toolbox.stream(argv, cwd=workspace)) as events:
            async for event in events:
                if isinstance(event, Output):
                    break  # leaving early: closing the stream cancels the job
        with anyio.fail_after(10):
            while any(j.argv == argv for j in await toolbox.jobs()):
                await anyio.sleep(0.05)
        with pytest.raises(DaemonError) as refused:
            await toolbox.run(["true"], cwd=workspace, timeout="100h")
        assert (refused.value.code, refused.value.field) == ("policy_forbids", "limits.timeout")
        assert (await toolbox.health())["status"] == "ok"


async def test_many_jobs_at_once(daemon: Daemon, workspace: Path) -> None:
    results: dict[int, bytes] = {}
    async with AsyncClient(daemon.socket) as toolbox:

        async def one(i: int) -> None:
            results[i] = (await toolbox.run(["echo", str(i)], cwd=workspace)).stdout

        async with anyio.create_task_group() as group:
            for i in range(12):  # more than the daemon's 8 slots: some queue
                group.start_soon(one, i)
    assert results == {i: f"{i}\n".encode() for i in range(12)}


async def test_start_read_write_exec_kill_wait(daemon: Daemon, workspace: Path) -> None:
    async with AsyncClient(daemon.socket) as toolbox:
        job = await toolbox.start(
            ["sh", "-c", "echo ready; while read l; do echo got:$l; done"], cwd=workspace
        )
        assert (await job.read(wait=5)).stdout == b"ready\n"
        await job.write_stdin(b"x\n")
        assert (await job.read(wait=5)).stdout == b"got:x\n"
        inside = await job.run(["sh", "-c", "echo $$ > /dev/null; echo inside"])
        assert inside.stdout == b"inside\n" and inside.record["exec_of"] == job.id
        assert any(j.job_id == job.id for j in await toolbox.jobs())
        await job.kill()
        result = await job.wait(timeout=15)
        assert result.status == "cancelled"
        assert result.stdout == b"ready\ngot:x\n"


async def test_leaving_async_with_cancels_and_no_daemon_names_the_socket(
    daemon: Daemon, workspace: Path, tmp_path: Path
) -> None:
    async with AsyncClient(daemon.socket) as toolbox:
        job = await toolbox.start(["sleep", "60"], cwd=workspace)
    async with AsyncClient(daemon.socket) as other:
        assert (await other.job(job.id).wait(timeout=15)).status == "cancelled"
    missing = str(tmp_path / "nobody.sock")
    async with AsyncClient(missing) as nobody:
        with pytest.raises(DaemonUnavailable, match=r"nobody\.sock"):
            await nobody.health()
