"""One `true` job through the daemon four ways, interleaved in one run: the socket itself
(HTTP/1.1 written by hand on a Unix socket, from this process: the baseline), curl (a process
per call, as a shell script would), the Python client (one `Client`, a call each), and
`toolbox mcp` (one MCP session of the official Python SDK, a `run` tool call each). Medians,
the 90th percentile, and each median's ratio to the socket's.

    scripts/bench-clients.sh [RUNS]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
from mcp import Client as McpClient
from mcp import StdioServerParameters

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
from daemon import Daemon
from toolbox_client import Client

TOOL_UID = 65534


async def bench(toolbox: Path, runs: int) -> None:
    state = Path(tempfile.mkdtemp(prefix="toolbox-bench-"))
    workspace = Path(tempfile.mkdtemp(prefix="toolbox-bench-ws-"))
    os.chown(workspace, TOOL_UID, TOOL_UID)
    workspace.chmod(0o755)
    daemon = Daemon(toolbox, state)
    try:
        body = json.dumps({"argv": ["true"], "cwd": str(workspace)})
        curl = ["curl", "-sS", "--unix-socket", daemon.socket]
        curl += ["-H", "Content-Type: application/json", "-d", body, "http://toolbox/v1/jobs"]
        request = (
            "POST /v1/jobs HTTP/1.1\r\nHost: toolbox\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
        ).encode()
        client = Client(daemon.socket)
        server = StdioServerParameters(
            command=str(toolbox),
            args=["mcp", "--socket", daemon.socket, "--workspace", str(workspace)],
        )
        async with McpClient(server) as session:

            async def by_socket() -> None:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(daemon.socket)
                    s.sendall(request)
                    answer = b""
                    while chunk := s.recv(65536):
                        answer += chunk
                assert b'"status":"exited","exit_code":0' in answer, answer

            async def by_curl() -> None:
                out = subprocess.run(curl, check=True, capture_output=True).stdout
                assert b'"status":"exited","exit_code":0' in out, out

            async def by_python() -> None:
                assert client.run(["true"], cwd=workspace).ok

            async def by_mcp() -> None:
                result = await session.call_tool("run", {"argv": ["true"]})
                assert not result.is_error and result.structured_content
                assert result.structured_content["result"]["exit_code"] == 0

            ways: dict[str, Callable[[], Awaitable[None]]] = {
                "socket (HTTP by hand)": by_socket,
                "curl": by_curl,
                "Python client": by_python,
                "toolbox mcp (MCP Python SDK)": by_mcp,
            }
            samples: dict[str, list[float]] = {name: [] for name in ways}
            names = list(ways)
            for _ in range(5):  # warm-up, not counted
                for name in names:
                    await ways[name]()
            for i in range(runs):
                # Each round in another order: none always runs first after a pause.
                for name in names[i % len(names) :] + names[: i % len(names)]:
                    start = time.perf_counter()
                    await ways[name]()
                    samples[name].append((time.perf_counter() - start) * 1000)
        client.close()
    finally:
        daemon.stop()
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(workspace, ignore_errors=True)
    base = statistics.median(samples["socket (HTTP by hand)"])
    print(f"one `true` job, {runs} interleaved runs each:")
    print(f"  {'way':<30} {'median':>9} {'p90':>9} {'ratio':>7}")
    for name, times in samples.items():
        median = statistics.median(times)
        p90 = statistics.quantiles(times, n=10)[-1]
        print(f"  {name:<30} {median:>7.2f}ms {p90:>7.2f}ms {median / base:>6.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--toolbox", type=Path, required=True, help="the toolbox binary")
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    anyio.run(bench, args.toolbox, args.runs)


if __name__ == "__main__":
    main()
