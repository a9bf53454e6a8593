"""Egress through a job's proxy against the host directly, in one run, from servers on this
machine (tests/support/egress_server.py):

- throughput: a 1 GiB download by curl in a job through its proxy (mode allowlist, an address
  rule) against the same download by curl on the host, interleaved; medians and their ratio.
  And through HAProxy, a production relay, on the host (TCP mode, splice(2) both ways): how
  far a relay that judges nothing gets on the same machine;
- connect latency: curl's time to the first byte of a small page, a new connection each, in
  one job through its proxy (plain HTTP, and HTTPS through CONNECT) against the host's
  curl; medians and the difference;
- memory: the daemon's RSS while 8 jobs each run 16 downloads at once through their
  proxies, against its RSS before them; and the daemon's CPU time for what it relayed.

    scripts/bench-egress.sh [RUNS]
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
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
from daemon import Daemon

ROOT = Path(__file__).resolve().parents[1]
TOOL_UID = 65534
GIB = 1 << 30


def start_servers(directory: Path) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "support" / "egress_server.py"), str(directory)],
        stdout=subprocess.PIPE,
    )
    assert server.stdout is not None
    ports: dict[str, int] = json.loads(server.stdout.readline())
    return server, ports


def run(argv: list[str]) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def median(values: list[float]) -> float:
    return statistics.median(values)


HAPROXY = """global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option splice-request
    option splice-response
frontend relay
    bind 127.0.0.1:{listen}
    default_backend server
backend server
    server only 127.0.0.1:{port}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_haproxy(state: Path, port: int) -> tuple[subprocess.Popen[bytes], int]:
    listen = free_port()
    config = state / "haproxy.cfg"
    config.write_text(HAPROXY.format(listen=listen, port=port))
    # -db: stay in the foreground, ours to end.
    relay = subprocess.Popen(["haproxy", "-db", "-f", str(config)])
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", listen), timeout=1).close()
            return relay, listen
        except OSError:
            if time.monotonic() > deadline or relay.poll() is not None:
                relay.kill()
                raise SystemExit("bench-egress: haproxy did not start") from None
            time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (every CPU, all but idle and iowait)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    busy = sum(int(value) for i, value in enumerate(fields[:8]) if i not in (3, 4))
    return busy / os.sysconf("SC_CLK_TCK")


def download(argv: list[str]) -> tuple[float, float]:
    """curl's rate (bytes a second) for one download, and the machine's CPU seconds for it."""
    before = machine_busy()
    rate = float(run(argv))
    return rate, machine_busy() - before


def bench(toolbox: Path, runs: int) -> None:
    state = Path(tempfile.mkdtemp(prefix="toolbox-bench-egress-"))
    workspace = state / "ws"
    workspace.mkdir()
    os.chown(workspace, TOOL_UID, TOOL_UID)
    server, ports = start_servers(state / "www")
    http, https = ports["http"], ports["https"]
    cert = workspace / "cert.pem"
    shutil.copy(state / "www" / "cert.pem", cert)
    cert.chmod(0o644)
    job = [str(toolbox), "run", "--local", "-C", str(workspace), "--policy", "network"]
    job += ["--allow", f"127.0.0.1:{http}", "--allow", f"127.0.0.1:{https}", "--"]
    haproxy, relay_port = start_haproxy(state, http)
    try:
        # Throughput.
        path = f"/bytes/{GIB}"
        curl = ["curl", "-sS", "-o", "/dev/null", "-w", "%{speed_download}"]
        direct: list[tuple[float, float]] = []
        proxied: list[tuple[float, float]] = []
        relayed: list[tuple[float, float]] = []
        for _ in range(runs):
            direct.append(download([*curl, f"http://127.0.0.1:{http}{path}"]))
            proxied.append(download([*job, *curl, f"http://127.0.0.1:{http}{path}"]))
            relayed.append(download([*curl, f"http://127.0.0.1:{relay_port}{path}"]))
        d = median([rate for rate, _ in direct])
        d_cpu = median([cpu for _, cpu in direct])
        # The rate of a relayed download on a 2-CPU VM moves with the host's load (2x from
        # one day to the next, while the direct one holds); the CPU it costs the machine
        # is the steadier figure.
        print(
            f"1 GiB download ({runs} runs each, interleaved; medians: GB/s, ratio to direct; "
            "the machine's CPU seconds, ratio to direct)"
        )
        for name, runs_of in (
            ("host, directly", direct),
            ("job, through its proxy", proxied),
            ("host, through HAProxy", relayed),
        ):
            rates = [rate for rate, _ in runs_of]
            cpu = median([cpu for _, cpu in runs_of])
            low, high = min(rates) / 1e9, max(rates) / 1e9
            print(
                f"  {name:23} {median(rates) / 1e9:5.2f}  (min {low:.2f}, max {high:.2f})"
                f"  {median(rates) / d:5.2f}   cpu {cpu:5.2f} s  {cpu / d_cpu:5.2f}"
            )

        # Connect latency: time to the first byte, a new connection each.
        n = 200
        page = f"http://127.0.0.1:{http}/index.html"
        tls = f"https://127.0.0.1:{https}/index.html"
        each = (
            "for i in $(seq {n}); do curl -sS -o /dev/null --cacert {cert} "
            "-w '%{{time_starttransfer}}\\n' {url}; done"
        )
        print(f"time to first byte ({n} requests each, a connection each; medians)")
        for name, target in (("HTTP", page), ("HTTPS", tls)):
            script = each.format(n=n, cert=cert, url=target)
            host = [float(x) for x in run(["sh", "-c", script]).split()]
            inside = [float(x) for x in run([*job, "sh", "-c", script]).split()]
            h, i = median(host) * 1e6, median(inside) * 1e6
            print(
                f"  {name:5} host {h:7.0f} µs   through the proxy {i:7.0f} µs"
                f"   (+{i - h:.0f} µs, {i / h:.2f}x)"
            )

        # Memory: the daemon with 8 jobs of 16 downloads each.
        policies = state / "policies"
        policies.mkdir()
        (policies / "local.toml").write_text(
            'extends = "default"\n[network]\nmode = "allowlist"\n'
            f'allow = ["127.0.0.1:{http}"]\n[limits]\ntimeout = "5m"\n'
        )
        daemon = Daemon(toolbox, state, "--policies", str(policies))
        try:
            pid = daemon.process.pid

            def rss() -> int:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
                return 0

            size = 64 << 20
            url = f"http://127.0.0.1:{http}/bytes/{size}"
            script = f"for i in $(seq 16); do curl -sS -o /dev/null {url} & done; wait"
            request = {"argv": ["sh", "-c", script], "cwd": str(workspace), "policy": "local"}
            body = json.dumps(request)
            before = rss()
            peak = before
            cpu_before = cpu_seconds(pid)
            done = threading.Event()

            def sample() -> None:
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, rss())
                    time.sleep(0.02)

            sampler = threading.Thread(target=sample)
            sampler.start()
            started = time.monotonic()
            post = ["curl", "-sS", "--unix-socket", daemon.socket]
            post += ["-H", "Content-Type: application/json", "-d", body, "http://toolbox/v1/jobs"]
            clients = [subprocess.Popen(post, stdout=subprocess.PIPE) for _ in range(8)]
            moved = 0
            for client in clients:
                out, _ = client.communicate()
                exit_line = json.loads(out.splitlines()[-1])
                moved += exit_line.get("egress", {}).get("bytes_down", 0)
            elapsed = time.monotonic() - started
            cpu = cpu_seconds(pid) - cpu_before
            done.set()
            sampler.join()
            print("8 jobs x 16 downloads at once through their proxies (the daemon)")
            rate = moved / elapsed / 1e9
            print(f"  moved {moved / GIB:.1f} GiB in {elapsed:.1f} s ({rate:.2f} GB/s)")
            print(f"  daemon CPU {cpu:.2f} s: {cpu / (moved / GIB):.3f} s a GiB relayed")
            print(
                f"  daemon RSS {before / 1024:.1f} MiB before, {peak / 1024:.1f} MiB at most"
                f" during (+{(peak - before) / 1024:.1f} MiB)"
            )
        finally:
            daemon.stop()
    finally:
        haproxy.kill()
        haproxy.wait()
        server.kill()
        server.wait()
        shutil.rmtree(state, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toolbox", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    bench(args.toolbox, args.runs)


if __name__ == "__main__":
    main()
