"""`toolbox mcp` driven by the official MCP Python SDK's client over stdio, against a real
daemon: what an MCP client (Claude Code, Codex, an agent framework) sees."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult, TextContent

from conftest import toolbox_binary
from daemon import Daemon
from toolbox_client import AsyncClient

pytestmark = pytest.mark.anyio

TOOLS = {"run", "start", "read_output", "write_stdin", "kill", "list_jobs"}


@asynccontextmanager
async def mcp_session(socket: str, workspace: Path) -> AsyncIterator[Client]:
    server = StdioServerParameters(
        command=str(toolbox_binary("toolbox")),
        args=["mcp", "--socket", socket, "--workspace", str(workspace)],
    )
    async with Client(server) as client:
        yield client


def text(result: CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, TextContent))


def structured(result: CallToolResult) -> dict[str, Any]:
    assert result.structured_content is not None, text(result)
    return dict(result.structured_content)


async def test_the_tools_are_listed_with_descriptions_schemas_and_annotations(
    daemon: Daemon, workspace: Path
) -> None:
    async with mcp_session(daemon.socket, workspace) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.description and len(tool.description) > 80, tool.name
        assert tool.annotations is not None and tool.annotations.title, tool.name
        assert tool.input_schema["type"] == "object"
    run = tools["run"]
    assert {
        "argv",
        "command",
        "cwd",
        "env",
        "stdin",
        "timeout",
        "policy",
        "network",
        "job_id",
    } <= set(run.input_schema["properties"])
    assert "killed when the command ends" in (run.description or "")
    assert tools["list_jobs"].annotations and tools["list_jobs"].annotations.read_only_hint
    assert tools["kill"].annotations and tools["kill"].annotations.destructive_hint
    assert "wait" in tools["start"].input_schema["properties"]


async def test_run_streams_progress_and_returns_the_record(daemon: Daemon, workspace: Path) -> None:
    messages: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    async with mcp_session(daemon.socket, workspace) as client:
        result = await client.call_tool(
            "run",
            {"command": "echo one; sleep 0.2; echo two >&2; pwd"},
            progress_callback=on_progress,
        )
    assert not result.is_error, text(result)
    record = structured(result)["result"]
    assert record["status"] == "exited" and record["exit_code"] == 0
    assert record["isolation"]["seccomp"] is True
    assert text(result).startswith(f"one\n{workspace}\n[stderr]\ntwo\n[exit 0")
    assert any(m.startswith("started job") for m in messages), messages
    # Each piece of output as it came (a slow reader may take stdout's two lines at once).
    assert any(m.startswith("one\n") for m in messages), messages
    assert "[stderr] two\n" in messages, messages


async def test_a_nonzero_exit_is_a_result_not_an_error(daemon: Daemon, workspace: Path) -> None:
    async with mcp_session(daemon.socket, workspace) as client:
        result = await client.call_tool("run", {"argv": ["sh", "-c", "echo no >&2; exit 3"]})
    assert not result.is_error
    assert structured(result)["result"]["exit_code"] == 3
    assert "[exit 3" in text(result)


async def test_refusals_and_bad_input_are_tool_errors_naming_what_was_wrong(
    daemon: Daemon, workspace: Path, tmp_path: Path
) -> None:
    async with mcp_session(daemon.socket, workspace) as client:
        over = await client.call_tool("run", {"argv": ["true"], "timeout": "100h"})
        policy = await client.call_tool("run", {"argv": ["true"], "policy": "no-such-policy"})
        both = await client.call_tool("run", {"argv": ["true"], "command": "true"})
        unknown = await client.call_tool("read_output", {"job_id": "feedfacecafe"})
        misnamed = await client.call_tool("run", {"argv": ["true"], "timeout_ms": 5})
        hostile = await client.call_tool("kill", {"job_id": "../../v1/health"})
    assert over.is_error and "policy_forbids" in text(over) and "limits.timeout" in text(over)
    assert policy.is_error and "no-such-policy" in text(policy)
    assert both.is_error and "not both" in text(both)
    assert unknown.is_error and "404" in text(unknown)
    assert misnamed.is_error and "timeout_ms" in text(misnamed)
    assert hostile.is_error and "is not a job id" in text(hostile)
    missing = str(tmp_path / "nobody.sock")
    async with mcp_session(missing, workspace) as client:
        nobody = await client.call_tool("run", {"argv": ["true"]})
    assert nobody.is_error and missing in text(nobody)


async def test_run_with_allow_reaches_the_listed_server_through_the_jobs_proxy(
    daemon: Daemon, workspace: Path, page_server: int
) -> None:
    url = f"http://127.0.0.1:{page_server}/"
    async with mcp_session(daemon.socket, workspace) as client:
        allowed = await client.call_tool(
            "run",
            {"argv": ["curl", "-sS", url], "policy": "network",
             "allow": [f"127.0.0.1:{page_server}"]},
        )  # fmt: skip
        none = await client.call_tool(
            "run", {"argv": ["curl", "-sS", "-i", url], "network": "none"}
        )
    assert not allowed.is_error, text(allowed)
    assert "a page on the host" in text(allowed)
    assert structured(allowed)["result"]["egress"]["allowed"] == 1
    # Mode none's proxy says why: the policy, in the command's own output.
    assert 'policy "default" gives this job no network' in text(none)


async def test_cancelling_the_call_cancels_the_job(daemon: Daemon, workspace: Path) -> None:
    async with mcp_session(daemon.socket, workspace) as client:
        with anyio.move_on_after(30) as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(
                    client.call_tool, "run", {"command": "touch started; exec sleep 60"}
                )
                while not (workspace / "started").exists():
                    await anyio.sleep(0.05)
                group.cancel_scope.cancel()  # the client gives up: notifications/cancelled
        assert not scope.cancelled_caught, "the job never started"
        async with AsyncClient(daemon.socket) as toolbox:
            with anyio.fail_after(15):
                while any(
                    j.argv[-1] == "touch started; exec sleep 60" for j in await toolbox.jobs()
                ):
                    await anyio.sleep(0.1)
    records = [
        r for r in daemon.audit_lines() if r.get("argv", [""])[-1] == "touch started; exec sleep 60"
    ]
    assert records and records[-1]["result"]["status"] == "cancelled", records


async def test_start_write_read_kill_end_to_end(daemon: Daemon, workspace: Path) -> None:
    async with mcp_session(daemon.socket, workspace) as client:
        started = await client.call_tool(
            "start", {"command": "echo ready; while read l; do echo got:$l; done", "wait": 1}
        )
        assert not started.is_error, text(started)
        job = structured(started)
        assert job["state"] == "running" and job["stdout"] == "ready\n"
        job_id = job["job_id"]
        written = await client.call_tool("write_stdin", {"job_id": job_id, "data": "hi\n"})
        assert structured(written)["stdout"] == "got:hi\n", text(written)
        quick = await client.call_tool(
            "write_stdin", {"job_id": job_id, "data": "again\n", "wait": 0}
        )
        read = await client.call_tool("read_output", {"job_id": job_id, "wait": 1})
        # Each byte comes once: in the answer to the write, or in the read after it.
        assert structured(quick)["stdout"] + structured(read)["stdout"] == "got:again\n"
        listed = await client.call_tool("list_jobs", {})
        assert job_id in text(listed)
        killed = await client.call_tool("kill", {"job_id": job_id})
        final = structured(killed)
        assert final["state"] == "ended" and final["result"]["status"] == "cancelled", final
        again = await client.call_tool("read_output", {"job_id": job_id, "wait": 0})
        assert structured(again)["result"]["status"] == "cancelled"


async def test_run_with_a_job_id_reaches_the_server_its_job_started(
    daemon: Daemon, workspace: Path
) -> None:
    (workspace / "hello.txt").write_text("hello from the job's server\n")
    fetch = (
        "import urllib.request, time\n"
        "for _ in range(100):\n"
        "    try:\n"
        "        page = urllib.request.urlopen('http://127.0.0.1:8765/hello.txt')\n"
        "        print(page.read().decode(), end='')\n"
        "        break\n"
        "    except OSError:\n"
        "        time.sleep(0.1)\n"
        "else:\n"
        "    raise SystemExit('no server')\n"
    )
    async with mcp_session(daemon.socket, workspace) as client:
        server = await client.call_tool(
            "start",
            {"argv": ["python3", "-m", "http.server", "8765", "--bind", "127.0.0.1"], "wait": 0},
        )
        job_id = structured(server)["job_id"]
        inside = await client.call_tool("run", {"argv": ["python3", "-c", fetch], "job_id": job_id})
        assert structured(inside)["stdout"] == "hello from the job's server\n", text(inside)
        assert structured(inside)["result"]["exec_of"] == job_id
        started_inside = await client.call_tool(
            "start", {"argv": ["python3", "-c", fetch], "job_id": job_id, "wait": 20}
        )
        assert structured(started_inside)["stdout"] == "hello from the job's server\n"
        assert structured(started_inside)["result"]["exec_of"] == job_id
        outside = await client.call_tool(
            "run", {"argv": ["python3", "-c", fetch.replace("range(100)", "range(3)")]}
        )
        assert structured(outside)["result"]["exit_code"] != 0  # a fresh jail: its own localhost
        await client.call_tool("kill", {"job_id": job_id})


async def test_jobs_started_by_a_session_end_with_it(daemon: Daemon, workspace: Path) -> None:
    async with mcp_session(daemon.socket, workspace) as client:
        started = await client.call_tool("start", {"argv": ["sleep", "60"], "wait": 0})
        job_id = structured(started)["job_id"]
    async with AsyncClient(daemon.socket) as toolbox:
        result = await toolbox.job(job_id).wait(timeout=15)
    assert result.status == "cancelled"
