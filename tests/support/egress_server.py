"""Servers for the egress tests (tests/tests/egress.rs) and benchmark, on this machine only.

    python3 egress_server.py DIR

Makes its fixtures in DIR — a page, a package index with one wheel (`toolboxdemo`), a git
repository served the "dumb" way, and a self-signed certificate for 127.0.0.1 — then serves
DIR over HTTP and HTTPS on 127.0.0.1, runs a DNS "resolver" on UDP (every interface) that
answers every query with 192.0.2.1, prints one JSON line of its ports, and serves until
killed. Every request is appended to DIR/requests.log (`METHOD PATH HOST`), every datagram
the resolver gets to DIR/dns.log. `/bytes/N` streams N zero bytes (the benchmark's download).
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

WHEEL = "toolboxdemo-1.0-py3-none-any.whl"


def make_fixtures(root: Path) -> None:
    (root / "index.html").write_text("hello through the proxy\n")
    wheel = root / "files" / WHEEL
    wheel.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("toolboxdemo/__init__.py", "GREETING = 'installed through the proxy'\n")
        info = "toolboxdemo-1.0.dist-info"
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: toolboxdemo\nVersion: 1.0\n")
        z.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: toolbox-tests\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n",
        )
        z.writestr(f"{info}/RECORD", "")
    project = root / "simple" / "toolboxdemo"
    project.mkdir(parents=True, exist_ok=True)
    (project / "index.html").write_text(
        f'<!DOCTYPE html><html><body><a href="../../files/{WHEEL}">{WHEEL}</a></body></html>\n'
    )
    (root / "simple" / "index.html").write_text(
        '<!DOCTYPE html><html><body><a href="toolboxdemo/">toolboxdemo</a></body></html>\n'
    )
    work = root / "work"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q", str(work)], check=True)
    (work / "README").write_text("cloned through the proxy\n")
    subprocess.run([*git, "-C", str(work), "add", "README"], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-qm", "one"], check=True)
    subprocess.run([*git, "clone", "-q", "--bare", str(work), str(root / "repo.git")], check=True)
    subprocess.run([*git, "-C", str(root / "repo.git"), "update-server-info"], check=True)
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(root / "key.pem"), "-out", str(root / "cert.pem"),
            "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip


def serve(root: Path) -> None:
    lock = threading.Lock()

    def note(name: str, line: str) -> None:
        with lock, open(root / name, "a") as log:
            log.write(line + "\n")

    class Handler(http.server.SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:
            pass

        raw_requestline: bytes

        def parse_request(self) -> bool:
            # Empty lines before a request are skipped, as nginx and most servers do.
            while self.raw_requestline in (b"\r\n", b"\n"):
                self.raw_requestline = self.rfile.readline(65537)
            return super().parse_request()

        def do_GET(self) -> None:
            note("requests.log", f"GET {self.path} {self.headers.get('Host', '')}")
            if self.path.startswith("/bytes/"):
                size = int(self.path.removeprefix("/bytes/"))
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                chunk = bytes(1 << 20)
                while size > 0:
                    n = min(size, len(chunk))
                    self.wfile.write(chunk[:n])
                    size -= n
                return
            super().do_GET()

        def do_HEAD(self) -> None:
            note("requests.log", f"HEAD {self.path} {self.headers.get('Host', '')}")
            super().do_HEAD()

    http_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    https_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(root / "cert.pem", root / "key.pem")
    https_server.socket = context.wrap_socket(https_server.socket, server_side=True)
    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns.bind(("0.0.0.0", 0))

    def resolve() -> None:
        while True:
            query, peer = dns.recvfrom(4096)
            note("dns.log", f"{peer[0]} {len(query)}")
            if len(query) < 12:
                continue
            # The question, echoed, and one A record: 192.0.2.1.
            header = query[:2] + b"\x81\x80" + query[4:6] + b"\x00\x01\x00\x00\x00\x00"
            answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc0\x00\x02\x01"
            dns.sendto(header + query[12:] + answer, peer)

    for target in (http_server.serve_forever, https_server.serve_forever, resolve):
        threading.Thread(target=target, daemon=True).start()
    ports = {
        "http": http_server.server_address[1],
        "https": https_server.server_address[1],
        "dns": dns.getsockname()[1],
    }
    print(json.dumps(ports), flush=True)
    threading.Event().wait()


def main() -> None:
    root = Path(sys.argv[1])
    root.mkdir(parents=True, exist_ok=True)
    os.chdir(root)
    make_fixtures(root)
    serve(root)


if __name__ == "__main__":
    main()
