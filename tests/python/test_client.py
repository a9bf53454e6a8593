"""The Python client's whole surface, blocking, against a real daemon."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import wait_until
from daemon import Daemon
from toolbox_client import (
    Client,
    DaemonError,
    DaemonUnavailable,
    Exit,
    JobFailed,
    Output,
    Started,
)


def test_run_returns_output_and_record_and_a_nonzero_exit_is_a_result(
    daemon: Daemon, workspace: Path
) -> None:
    with Client(daemon.socket) as toolbox:
        result = toolbox.run(
            ["sh", "-c", "echo out; echo err >&2; printf '\\377'; exit 3"], cwd=workspace
        )
    assert result.status == "exited"
    assert result.exit_code == 3
    assert not result.ok
    assert result.stdout == b"out\n\xff"
    assert result.stderr_text == "err\n"
    assert result.record["policy"]["name"] == "default"
    assert "net" in result.isolation["namespaces"]
    assert result.isolation["uid"] == 65534


def test_check_raises_with_the_result(daemon: Daemon, workspace: Path) -> None:
    with Client(daemon.socket) as toolbox:
        with pytest.raises(JobFailed) as failed:
            toolbox.run(["false"], cwd=workspace, check=True)
        assert failed.value.result.exit_code == 1
        assert toolbox.run(["true"], cwd=workspace, check=True).ok


def test_stdin_env_and_callbacks(daemon: Daemon, workspace: Path) -> None:
    seen: list[str] = []
    with Client(daemon.socket) as toolbox:
        text = toolbox.run(["cat"], cwd=workspace, stdin="héllo\n", on_stdout=seen.append)
        binary = toolbox.run(["od", "-An", "-tx1"], cwd=workspace, stdin=b"\x00\xff")
        env = toolbox.run(["sh", "-c", "echo $GREETING"], cwd=workspace, env={"GREETING": "hi"})
    assert text.stdout_text == "héllo\n"
    assert "".join(seen) == "héllo\n"
    assert binary.stdout_text.split() == ["00", "ff"]
    assert env.stdout_text == "hi\n"


def test_the_timeout_is_the_jobs(daemon: Daemon, workspace: Path) -> None:
    with Client(daemon.socket) as toolbox:
        result = toolbox.run(["sleep", "30"], cwd=workspace, timeout=0.5)
    assert result.status == "timeout"
    assert result.exit_code == 124
    assert result.duration_ms < 10_000


def test_stream_yields_typed_events_and_leaving_it_cancels_the_job(
    daemon: Daemon, workspace: Path
) -> None:
    with Client(daemon.socket) as toolbox:
        events = list(toolbox.stream(["sh", "-c", "echo a; echo b"], cwd=workspace))
        assert isinstance(events[0], Started)
        assert b"".join(e.data for e in events if isinstance(e, Output)) == b"a\nb\n"
        assert isinstance(events[-1], Exit)
        assert events[-1].result.stdout == b"a\nb\n"

        stream = toolbox.stream(["sh", "-c", "echo ready; exec sleep 60"], cwd=workspace)
        started = next(stream)
        assert isinstance(started, Started)
        for event in stream:
            if isinstance(event, Output):
                break
        stream.close()  # leaving the loop: the connection closes, the daemon cancels
        wait_until(
            lambda: all(j.job_id != started.job_id for j in toolbox.jobs()),
            what="the abandoned job's end",
        )
    records = [r for r in daemon.audit_lines() if r.get("job_id") == started.job_id]
    assert records and records[-1]["result"]["status"] == "cancelled", records


def test_a_started_job_is_read_written_waited_for_and_listed(
    daemon: Daemon, workspace: Path
) -> None:
    with Client(daemon.socket) as toolbox:
        job = toolbox.start(
            ["sh", "-c", "echo ready; while read l; do echo got:$l; done; echo bye"],
            cwd=workspace,
        )
        assert job.read(wait=5).stdout == b"ready\n"
        assert job.write_stdin("one\n") == 4
        out = job.read(wait=5)
        assert out.stdout == b"got:one\n" and not out.done
        listed = {j.job_id: j for j in toolbox.jobs()}
        assert listed[job.id].detached and listed[job.id].state == "running"
        job.close_stdin()
        result = job.wait(timeout=10)
        assert job.info().state == "ended"
    assert result.status == "exited" and result.exit_code == 0
    assert result.stdout == b"ready\ngot:one\nbye\n"


def test_kill_ends_a_started_job_and_everything_it_started(daemon: Daemon, workspace: Path) -> None:
    with Client(daemon.socket) as toolbox:
        job = toolbox.start(["sh", "-c", "sleep 60 & sleep 60 & echo up; wait"], cwd=workspace)
        assert job.read(wait=5).stdout == b"up\n"
        job.kill()
        result = job.wait(timeout=15)
        job.kill()  # ended already: not an error
    assert result.status == "cancelled"


def test_run_and_start_inside_a_job_share_its_jail(daemon: Daemon, workspace: Path) -> None:
    with Client(daemon.socket) as toolbox:
        job = toolbox.start(["sh", "-c", "echo secret > /tmp/mark; exec sleep 60"], cwd=workspace)
        wait_until(
            lambda: job.run(["cat", "/tmp/mark"]).stdout == b"secret\n", what="the mark in /tmp"
        )
        inner = job.start(["sh", "-c", "cat /tmp/mark"])
        assert inner.wait(timeout=10).stdout == b"secret\n"
        fresh = toolbox.run(["cat", "/tmp/mark"], cwd=workspace)
        assert fresh.exit_code != 0  # a new job has a /tmp of its own
        job.kill()


def test_leaving_the_with_block_cancels_what_it_started(daemon: Daemon, workspace: Path) -> None:
    with Client(daemon.socket) as toolbox:
        job = toolbox.start(["sleep", "60"], cwd=workspace)
    with Client(daemon.socket) as other:
        handle = other.job(job.id)
        result = handle.wait(timeout=15)
    assert result.status == "cancelled"


def test_refusals_carry_the_daemons_code_field_and_message(daemon: Daemon, workspace: Path) -> None:
    with Client(daemon.socket) as toolbox:
        with pytest.raises(DaemonError) as refused:
            toolbox.run(["true"], cwd=workspace, timeout="100h")
        assert refused.value.status == 403
        assert refused.value.code == "policy_forbids"
        assert refused.value.field == "limits.timeout"
        with pytest.raises(DaemonError) as unknown:
            toolbox.run(["true"], cwd=workspace, policy="no-such-policy")
        assert unknown.value.field == "policy"
        with pytest.raises(DaemonError) as gone:
            toolbox.job("feedfacecafe").read()
        assert gone.value.status == 404
        with pytest.raises(TypeError):
            toolbox.run("ls -l", cwd=workspace)
        assert toolbox.health()["status"] == "ok"


def test_allow_opens_a_way_out_to_the_rules_and_nowhere_else(
    daemon: Daemon, workspace: Path, page_server: int
) -> None:
    url = f"http://127.0.0.1:{page_server}/"
    with Client(daemon.socket) as toolbox:
        allowed = toolbox.run(
            ["curl", "-sS", url], cwd=workspace, policy="network",
            allow=[f"127.0.0.1:{page_server}"],
        )  # fmt: skip
        refused = toolbox.run(
            ["curl", "-sS", "-i", url], cwd=workspace, policy="network", allow=["pypi.org"]
        )
        with pytest.raises(TypeError, match="list of rules"):
            toolbox.run(["true"], cwd=workspace, allow="pypi.org")
    assert allowed.ok, allowed
    assert allowed.stdout_text == "a page on the host\n"
    assert allowed.isolation["network"] == "allowlist"
    assert allowed.egress is not None and allowed.egress["allowed"] == 1
    assert allowed.egress["connections"][0]["rule"] == f"127.0.0.1:{page_server}"
    assert "403 Forbidden by toolbox" in refused.stdout_text
    assert refused.egress is not None and refused.egress["refused"] == 1
    assert "pypi.org:443" in refused.egress["connections"][0]["reason"]


def test_no_daemon_is_a_clear_error_naming_the_socket(tmp_path: Path) -> None:
    missing = str(tmp_path / "nobody.sock")
    with Client(missing) as toolbox, pytest.raises(DaemonUnavailable) as unavailable:
        toolbox.run(["true"], cwd=tmp_path)
    assert unavailable.value.socket == missing
    assert missing in str(unavailable.value)
