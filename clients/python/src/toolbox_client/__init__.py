"""A client for the toolbox daemon: run commands in jails over its Unix socket.

    from toolbox_client import Client

    with Client() as toolbox:                      # $TOOLBOX_SOCKET or the default socket
        result = toolbox.run(["pytest", "-q"], cwd="/srv/repo", timeout=300)
        print(result.exit_code, result.stdout_text)

`AsyncClient` is the same, awaited.
"""

from ._async import AsyncClient, AsyncJob
from ._sync import Client, Job
from ._types import (
    DaemonError,
    DaemonUnavailable,
    Event,
    Exit,
    JobFailed,
    JobInfo,
    JobOutput,
    Output,
    ProtocolError,
    Queued,
    Result,
    Started,
    ToolboxError,
    Truncated,
)
from ._wire import DEFAULT_SOCKET

__all__ = [
    "DEFAULT_SOCKET",
    "AsyncClient",
    "AsyncJob",
    "Client",
    "DaemonError",
    "DaemonUnavailable",
    "Event",
    "Exit",
    "Job",
    "JobFailed",
    "JobInfo",
    "JobOutput",
    "Output",
    "ProtocolError",
    "Queued",
    "Result",
    "Started",
    "ToolboxError",
    "Truncated",
]
