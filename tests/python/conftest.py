"""A real toolbox daemon for the Python client's and the MCP server's tests.

The daemon is the one `cargo build` made (TOOLBOX_BIN_DIR, default the musl debug build);
it runs as root, as in production, in a cgroup of its own beneath this process's, and its
jobs run as TOOL_UID, the owner of each test's workspace.
"""

from __future__ import annotations

import http.server
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon import Daemon, DaemonFailed

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = Path(
    os.environ.get("TOOLBOX_BIN_DIR", REPO / "target" / "x86_64-unknown-linux-musl" / "debug")
)
TOOL_UID = 65534


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


@pytest.fixture(scope="session")
def daemon() -> Iterator[Daemon]:
    require_root()
    directory = Path(tempfile.mkdtemp(prefix="toolbox-pytest-"))
    try:
        running = Daemon(toolbox_binary("toolbox"), directory)
    except DaemonFailed as failed:
        pytest.fail(str(failed))
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


@pytest.fixture
def page_server() -> Iterator[int]:
    """An HTTP server on the host's 127.0.0.1 answering every GET with a page: its port."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"a page on the host\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
