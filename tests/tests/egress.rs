//! Egress by allowlist (network mode `allowlist`), with the real clients agents run — curl,
//! pip, git — against servers this test starts on this machine (tests/support/
//! egress_server.py: HTTP and HTTPS on 127.0.0.1, a package index, a git repository, a DNS
//! resolver), reached through each job's proxy by explicit address rules. No test reaches
//! beyond this machine. The cgroup v2 VM tier, whose guest has none of these tools, leaves
//! this suite out; its jails get the same proxy (every `none` job is served one).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use toolbox_tests::daemon::{job_body, Daemon};
use toolbox_tests::{require_root, require_tool, toolbox, workspace, Job, Run, TOOL_UID};

/// The test's servers, killed when dropped.
struct Servers {
    child: Child,
    dir: tempfile::TempDir,
    http: u16,
    https: u16,
    dns: u16,
}

impl Servers {
    fn start() -> Servers {
        let python = require_tool("python3").expect("python3");
        let dir = tempfile::Builder::new()
            .prefix("toolbox-egress-")
            .tempdir()
            .expect("tempdir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("support/egress_server.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg(dir.path().join("www"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the test's servers");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the servers' ports");
        let ports: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the servers did not start ({e}): {line:?}"));
        let port = |name: &str| ports[name].as_u64().expect("port") as u16;
        Servers {
            http: port("http"),
            https: port("https"),
            dns: port("dns"),
            child,
            dir,
        }
    }

    fn www(&self) -> PathBuf {
        self.dir.path().join("www")
    }

    /// Every request the HTTP and HTTPS servers got, as `METHOD PATH HOST`.
    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(self.www().join("requests.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// How many datagrams the resolver got.
    fn dns_queries(&self) -> usize {
        std::fs::read_to_string(self.www().join("dns.log"))
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// An allowlist policy (the default one, extended) with these rules, in a directory of
    /// its own; its path.
    fn policy(&self, name: &str, rules: &[String]) -> PathBuf {
        let dir = self.dir.path().join("policies");
        std::fs::create_dir_all(&dir).expect("policy dir");
        let rules: Vec<String> = rules.iter().map(|r| format!("{r:?}")).collect();
        let text = format!(
            "extends = \"default\"\ndescription = \"egress test\"\n[network]\n\
             mode = \"allowlist\"\nallow = [{}]\n",
            rules.join(", ")
        );
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("write policy");
        path
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sh -c script` in a jail under `policy`, in `ws`.
fn sh(ws: &Path, policy: &Path, script: &str) -> Job {
    Run::command(ws, &["sh", "-c", script])
        .without_probe()
        .opts(&["--policy", policy.to_str().expect("utf8")])
        .run()
}

fn egress_of(job: &Job) -> &Value {
    let egress = &job.record()["egress"];
    assert!(egress.is_object(), "no egress in the record: {job:?}");
    egress
}

fn connections(job: &Job) -> &Vec<Value> {
    egress_of(job)["connections"]
        .as_array()
        .expect("connections")
}

/// The job's connections refused with `code`, each of `reasons` found in one of theirs.
fn refusals<'a>(job: &'a Job, code: &str, reasons: &[&str]) -> Vec<&'a Value> {
    let refused: Vec<&Value> = connections(job)
        .iter()
        .filter(|c| c["code"] == code)
        .collect();
    for reason in reasons {
        assert!(
            refused
                .iter()
                .any(|c| c["reason"].as_str().is_some_and(|r| r.contains(reason))),
            "no {code} refusal says {reason:?}: {refused:?}"
        );
    }
    refused
}

/// The server's certificate, where the job can read it.
fn cert_into(servers: &Servers, ws: &Path) -> String {
    let cert = ws.join("cert.pem");
    std::fs::copy(servers.www().join("cert.pem"), &cert).expect("copy cert");
    cert.to_string_lossy().into_owned()
}

/// The system's python3 (not a caller's pyenv shim, which wants to write its home).
fn python() -> String {
    require_tool("python3")
        .expect("python3")
        .to_string_lossy()
        .into_owned()
}

fn tools() -> bool {
    require_root()
        && ["curl", "git", "python3"]
            .iter()
            .all(|tool| require_tool(tool).is_some())
}

#[test]
fn curl_pip_and_git_reach_what_the_rules_allow_through_the_proxy() {
    if !tools() {
        return;
    }
    let servers = Servers::start();
    let (http, https) = (servers.http, servers.https);
    let policy = servers.policy(
        "local",
        &[format!("127.0.0.1:{http}"), format!("127.0.0.1:{https}")],
    );
    let ws = workspace();
    let w = ws.path().to_str().expect("utf8");
    let cert = cert_into(&servers, ws.path());
    let py = python();

    // HTTPS through CONNECT, then plain HTTP in absolute form.
    let job = sh(
        ws.path(),
        &policy,
        &format!(
            "curl -sS --cacert {cert} https://127.0.0.1:{https}/index.html && \
             curl -sS http://127.0.0.1:{http}/index.html"
        ),
    );
    assert_eq!(job.code, 0, "{job:?}");
    assert_eq!(job.stdout_text(), "hello through the proxy\n".repeat(2));
    assert_eq!(job.record()["isolation"]["network"], "allowlist");
    let egress = egress_of(&job);
    let counts = ["allowed", "refused", "failed"].map(|k| egress[k].as_u64());
    assert_eq!(counts, [Some(2), Some(0), Some(0)], "{egress}");
    let conns = connections(&job);
    assert_eq!(conns.len(), 2, "{egress}");
    assert_eq!(conns[0]["via"], "connect");
    assert_eq!(conns[0]["host"], "127.0.0.1");
    assert_eq!(conns[0]["port"], https);
    assert_eq!(conns[0]["address"], "127.0.0.1");
    assert_eq!(conns[0]["rule"], format!("127.0.0.1:{https}"));
    assert!(
        conns[0]["bytes_up"].as_u64() > Some(200),
        "the TLS handshake: {egress}"
    );
    assert!(conns[0]["bytes_down"].as_u64() > Some(500), "{egress}");
    assert_eq!(conns[1]["via"], "http");
    assert_eq!(conns[1]["rule"], format!("127.0.0.1:{http}"));
    let sum = |field: &str| {
        conns
            .iter()
            .map(|c| c[field].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    assert_eq!(egress["bytes_up"].as_u64(), Some(sum("bytes_up")));
    assert_eq!(egress["bytes_down"].as_u64(), Some(sum("bytes_down")));
    // The plain request reached the server in origin form, its Host the URL's.
    assert!(
        servers
            .requests()
            .contains(&format!("GET /index.html 127.0.0.1:{http}")),
        "{:?}",
        servers.requests()
    );

    // pip installs from the package index over HTTPS; the package then imports.
    let job = sh(
        ws.path(),
        &policy,
        &format!(
            "{py} -m pip install -q --no-deps --no-cache-dir --disable-pip-version-check \
             --target {w}/site --cert {cert} --index-url https://127.0.0.1:{https}/simple/ \
             toolboxdemo && PYTHONPATH={w}/site {py} -c \
             'import toolboxdemo; print(toolboxdemo.GREETING)'"
        ),
    );
    assert_eq!(job.code, 0, "{job:?}");
    assert_eq!(job.stdout_text(), "installed through the proxy\n");
    assert!(egress_of(&job)["allowed"].as_u64() >= Some(1), "{job:?}");
    assert_eq!(egress_of(&job)["refused"], 0, "{job:?}");

    // git clones over HTTP (the dumb protocol: plain GETs through the proxy).
    let job = sh(
        ws.path(),
        &policy,
        &format!("git clone -q http://127.0.0.1:{http}/repo.git {w}/clone && cat {w}/clone/README"),
    );
    assert_eq!(job.code, 0, "{job:?}");
    assert_eq!(job.stdout_text(), "cloned through the proxy\n");
    assert!(connections(&job).iter().all(|c| c["decision"] == "allowed"));
    assert!(servers
        .requests()
        .iter()
        .any(|r| r.starts_with("GET /repo.git/info/refs")));
}

#[test]
fn what_the_rules_do_not_allow_is_refused_with_the_rule_named_and_logged() {
    if !tools() {
        return;
    }
    let servers = Servers::start();
    let http = servers.http;
    let policy = servers.policy("narrow", &[format!("127.0.0.1:{http}")]);
    let ws = workspace();

    // A name not on the list: CONNECT, a plain request, SOCKS.
    let job = sh(
        ws.path(),
        &policy,
        "curl -sS https://pypi.org/simple/; echo \"curl $?\"; \
         curl -sS -i http://files.pythonhosted.org/x; \
         curl -sS -x socks5h://127.0.0.1:1080 https://pypi.org/; echo \"socks $?\"",
    );
    let out = job.stdout_text();
    assert!(out.contains("curl 56"), "CONNECT refused: {out}");
    assert!(out.contains("socks 97"), "SOCKS refused: {out}");
    assert!(out.contains("HTTP/1.1 403 Forbidden by toolbox"), "{out}");
    assert!(out.contains("X-Toolbox-Egress: not-allowed"), "{out}");
    assert!(
        out.contains("egress to files.pythonhosted.org:80 refused: no rule of this job allows it")
            && out.contains(&format!("127.0.0.1:{http}")),
        "the body names the rules: {out}"
    );
    let egress = egress_of(&job);
    assert_eq!(egress["allowed"], 0, "{egress}");
    assert_eq!(egress["refused"], 3, "{egress}");
    let conns = connections(&job);
    let vias: Vec<&str> = conns.iter().filter_map(|c| c["via"].as_str()).collect();
    assert_eq!(vias, ["connect", "http", "socks"]);
    for conn in conns {
        assert_eq!(conn["decision"], "refused");
        assert_eq!(conn["code"], "not-allowed");
        assert!(conn["reason"]
            .as_str()
            .is_some_and(|r| r.contains("narrow")));
    }
    // Said once, after the output.
    assert!(
        job.stderr
            .contains("[toolbox: egress: 3 connections through the job's proxy did not go through"),
        "{}",
        job.stderr
    );

    // Around the proxy: no proxy, a direct connection (to the allowed server's own address,
    // refused by Landlock; beyond lo on a port Landlock allows, no route).
    let before = servers.requests().len();
    let py = python();
    let job = sh(
        ws.path(),
        &policy,
        &format!(
            "curl -sS --noproxy '*' http://127.0.0.1:{http}/index.html; echo \"noproxy $?\"; \
             {py} -c '\nimport socket\nfor addr in ((\"127.0.0.1\", {http}), \
             (\"192.0.2.1\", 3128)):\n    s = socket.socket()\n    s.settimeout(3)\n    \
             try:\n        s.connect(addr)\n        print(\"connected\", addr)\n    \
             except OSError as e:\n        print(\"refused\", e.errno)\n'"
        ),
    );
    let out = job.stdout_text();
    assert!(out.contains("noproxy 7"), "{out}");
    assert!(
        out.contains(&format!("refused {}", libc::EACCES))
            && out.contains(&format!("refused {}", libc::ENETUNREACH))
            && !out.contains("connected"),
        "{out}"
    );
    assert_eq!(servers.requests().len(), before, "{:?}", servers.requests());

    // A Host header that disagrees with the URL.
    let job = sh(
        ws.path(),
        &policy,
        &format!("curl -sS -i -H 'Host: evil.example' http://127.0.0.1:{http}/index.html"),
    );
    let out = job.stdout_text();
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("disagrees with the URL"), "{out}");
    assert_eq!(connections(&job)[0]["code"], "bad-request");
    assert_eq!(servers.requests().len(), before, "{:?}", servers.requests());
}

#[test]
fn a_connect_relayed_by_another_process_of_the_job_is_judged_by_the_same_rules() {
    if !tools() {
        return;
    }
    let servers = Servers::start();
    let http = servers.http;
    let policy = servers.policy("relayed", &[format!("127.0.0.1:{http}")]);
    let ws = workspace();
    // A helper in the job relays a Unix socket to the proxy, and a client speaks CONNECT
    // through it: one request the rules allow, one they do not.
    let relay = format!(
        r#"
import os, socket, threading
path = "{ws}/relay.sock"
server = socket.socket(socket.AF_UNIX)
server.bind(path)
server.listen()
def pump(a, b):
    while data := a.recv(65536):
        b.sendall(data)
    b.shutdown(socket.SHUT_WR)
def relay():
    while True:
        conn, _ = server.accept()
        up = socket.create_connection(("127.0.0.1", 3128))
        threading.Thread(target=pump, args=(conn, up), daemon=True).start()
        threading.Thread(target=pump, args=(up, conn), daemon=True).start()
threading.Thread(target=relay, daemon=True).start()
for target in ("127.0.0.1:{http}", "pypi.org:443"):
    c = socket.socket(socket.AF_UNIX)
    c.connect(path)
    c.sendall(f"CONNECT {{target}} HTTP/1.1\r\nHost: {{target}}\r\n\r\n".encode())
    print(target, c.recv(4096).split(b"\r\n")[0].decode())
    c.close()
"#,
        ws = ws.path().display()
    );
    let job = Run::command(ws.path(), &[&python(), "-c", &relay])
        .without_probe()
        .opts(&["--policy", policy.to_str().expect("utf8")])
        .run();
    let out = job.stdout_text();
    assert!(
        out.contains(&format!("127.0.0.1:{http} HTTP/1.1 200")),
        "{out} {job:?}"
    );
    assert!(
        out.contains("pypi.org:443 HTTP/1.1 403 Forbidden by toolbox"),
        "{out}"
    );
    let conns = connections(&job);
    assert_eq!(conns[0]["decision"], "allowed", "{conns:?}");
    assert_eq!(conns[1]["code"], "not-allowed", "{conns:?}");
}

#[test]
fn no_name_is_resolved_for_the_job_and_no_query_leaves_it() {
    if !tools() {
        return;
    }
    let servers = Servers::start();
    let policy = servers.policy("dns", &["pypi.org".into()]);
    let ws = workspace();
    // The resolver listens on every interface: the host's loopback and its own address.
    let mut targets = vec!["127.0.0.1".to_string()];
    if let Some(own) = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|()| s))
        .and_then(|s| s.local_addr())
        .ok()
        .filter(|a| !a.ip().is_unspecified())
    {
        targets.push(own.ip().to_string());
    }
    let query = format!(
        r#"
import socket
q = bytes.fromhex("abcd01000001000000000000") + b"\x04pypi\x03org\x00\x00\x01\x00\x01"
for host in {targets:?}:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        s.sendto(q, (host, {port}))
        s.recvfrom(512)
        print("answered", host)
    except OSError as e:
        print("no answer", host, e.errno)
"#,
        port = servers.dns
    );
    let script = format!(
        "getent hosts pypi.org; echo \"getent $?\"; {} -c '{}'",
        python(),
        query.replace('\'', "'\\''")
    );
    let job = sh(ws.path(), &policy, &script);
    let out = job.stdout_text();
    assert!(out.contains("getent 2"), "{out}");
    assert!(!out.contains("answered"), "{out}");
    assert_eq!(out.matches("no answer").count(), targets.len(), "{out}");
    assert_eq!(servers.dns_queries(), 0, "a query left the job");
    // Control: with the host's network the same queries reach the resolver.
    let job = Run::command(ws.path(), &[&python(), "-c", &query])
        .without_probe()
        .opts(&["--policy", "network"])
        .run();
    assert!(job.stdout_text().contains("answered"), "control: {job:?}");
    assert!(
        servers.dns_queries() >= 1,
        "control: the resolver saw nothing"
    );
}

/// `toolbox run` with the supervisor's names resolving as `hosts` says: an /etc/hosts of
/// the test's own, bound over the host's in a mount namespace of the test's.
fn with_hosts(hosts: &Path, ws: &Path, policy: &Path, argv: &[&str]) -> Job {
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$1\" /etc/hosts && shift && exec \"$@\"")
        .arg("sh")
        .arg(hosts)
        .arg(toolbox())
        .args([
            "run",
            "--local",
            "--json",
            "--user",
            &TOOL_UID.to_string(),
            "-C",
        ])
        .arg(ws)
        .arg("--policy")
        .arg(policy)
        .arg("--")
        .args(argv)
        .output()
        .expect("run toolbox in a mount namespace");
    toolbox_tests::finish(output)
}

#[test]
fn a_tunnel_s_tls_must_ask_for_the_name_it_was_allowed_for() {
    if !tools() || require_tool("unshare").is_none() {
        return;
    }
    let servers = Servers::start();
    let https = servers.https;
    let hosts = servers.dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n127.0.0.1 good.test\n").expect("hosts");
    // The name, and its (loopback) address, which only an address rule lets through.
    let policy = servers.policy(
        "sni",
        &[format!("good.test:{https}"), format!("127.0.0.1:{https}")],
    );
    let ws = workspace();
    let script = format!(
        r#"
import socket, ssl, struct
def attempt(via, sni):
    s = socket.create_connection(("127.0.0.1", 3128 if via == "connect" else 1080))
    if via == "connect":
        s.sendall(b"CONNECT good.test:{https} HTTP/1.1\r\nHost: good.test:{https}\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
    else:
        s.sendall(b"\x05\x01\x00")
        s.recv(2)
        s.sendall(b"\x05\x01\x00\x03\x09good.test" + struct.pack(">H", {https}))
        assert s.recv(10)[1] == 0
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        t = ctx.wrap_socket(s, server_hostname=sni)
        t.sendall(b"GET /index.html HTTP/1.1\r\nHost: good.test\r\nConnection: close\r\n\r\n")
        got = b""
        while chunk := t.recv(4096):
            got += chunk
        print(via, sni, "answered", b"hello through the proxy" in got)
    except (OSError, ssl.SSLError) as e:
        print(via, sni, "closed", type(e).__name__)
for via in ("connect", "socks"):
    for sni in ("good.test", "evil.test", None):
        attempt(via, sni)
"#
    );
    let job = with_hosts(&hosts, ws.path(), &policy, &[&python(), "-c", &script]);
    let out = job.stdout_text();
    for via in ["connect", "socks"] {
        assert!(
            out.contains(&format!("{via} good.test answered True")),
            "{out} {job:?}"
        );
        assert!(out.contains(&format!("{via} evil.test closed")), "{out}");
        assert!(out.contains(&format!("{via} None closed")), "{out}");
    }
    let conns = connections(&job);
    let refused = refusals(&job, "tls-name", &["asks for evil.test", "no SNI"]);
    assert_eq!(refused.len(), 4, "{conns:?}");
    assert_eq!(egress_of(&job)["allowed"], 2, "{conns:?}");
}

#[test]
fn a_tunnel_s_plain_http_must_name_the_host_it_was_allowed_for() {
    if !tools() || require_tool("unshare").is_none() {
        return;
    }
    let servers = Servers::start();
    let http = servers.http;
    let hosts = servers.dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n127.0.0.1 good.test\n").expect("hosts");
    let policy = servers.policy(
        "tunnel-http",
        &[format!("good.test:{http}"), format!("127.0.0.1:{http}")],
    );
    let ws = workspace();
    // curl -p sends plain HTTP through CONNECT; then by hand: a Host naming another site
    // (also after empty lines, sent first: servers skip them), h2c, and a second request on
    // a tunnel whose first was for the right host.
    let script = format!(
        r#"
import socket, subprocess, time
out = subprocess.run(["curl", "-sS", "-p", "http://good.test:{http}/index.html"],
                     capture_output=True, text=True).stdout
print("curl -p", "answered" if "hello through the proxy" in out else "failed: " + out)
def attempt(label, data, then=b""):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
    s.sendall(b"CONNECT good.test:{http} HTTP/1.1\r\nHost: good.test:{http}\r\n\r\n")
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    s.sendall(data)
    if then:
        time.sleep(0.3)
        try:
            s.sendall(then)
        except OSError:
            pass
    got = b""
    try:
        while chunk := s.recv(65536):
            got += chunk
    except TimeoutError:
        got += b" (still open)"
    except OSError:
        pass
    print(label, "answered" if got else "closed", got.count(b"HTTP/1."))
attempt("evil", b"GET /index.html HTTP/1.1\r\nHost: evil.test\r\n\r\n")
attempt("lines", b"\r\n" * 40, b"GET /index.html HTTP/1.1\r\nHost: evil.test\r\n\r\n")
attempt("h2c", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
attempt("second", b"GET /index.html HTTP/1.1\r\nHost: good.test\r\n\r\n"
                  b"GET /index.html?second HTTP/1.1\r\nHost: evil.test\r\n\r\n")
"#
    );
    let job = with_hosts(&hosts, ws.path(), &policy, &[&python(), "-c", &script]);
    let out = job.stdout_text();
    assert!(out.contains("curl -p answered"), "{out} {job:?}");
    for label in ["evil", "lines", "h2c"] {
        assert!(out.contains(&format!("{label} closed 0")), "{label}: {out}");
    }
    // One answer: the server closed after it, as the forwarded request asked.
    assert!(out.contains("second answered 1"), "{out}");
    let requests = servers.requests();
    assert!(
        requests.iter().all(|r| r
            .rsplit(' ')
            .next()
            .is_some_and(|h| h.starts_with("good.test"))),
        "{requests:?}"
    );
    assert_eq!(requests.len(), 2, "{requests:?}");
    let conns = connections(&job);
    let refused = refusals(&job, "http-host", &["is for evil.test", "h2c"]);
    assert_eq!(refused.len(), 3, "{conns:?}");
    assert_eq!(egress_of(&job)["allowed"], 2, "{conns:?}");
}

#[test]
fn allowed_names_that_resolve_to_loopback_or_the_metadata_service_are_refused() {
    if !tools() || require_tool("unshare").is_none() {
        return;
    }
    let servers = Servers::start();
    let http = servers.http;
    // The names resolve as the supervisor's /etc/hosts says: one of this test's own, bound
    // over the host's in a mount namespace of the test's.
    let hosts = servers.dir.path().join("hosts");
    std::fs::write(
        &hosts,
        "127.0.0.1 localhost\n169.254.169.254 metadata.test\n10.1.2.3 intranet.test\n",
    )
    .expect("hosts");
    let policy = servers.policy(
        "names",
        &[
            format!("localhost:{http}"),
            "metadata.test:80".into(),
            "intranet.test:80".into(),
            "169.254.0.0/16:8080".into(),
        ],
    );
    let ws = workspace();
    let script = format!(
        "curl -sS -i http://localhost:{http}/index.html; curl -sS -i http://metadata.test/; \
         curl -sS -i http://intranet.test/; curl -sS -i http://169.254.169.254/latest/"
    );
    let job = with_hosts(&hosts, ws.path(), &policy, &["sh", "-c", &script]);
    let out = job.stdout_text();
    assert_eq!(
        out.matches("403 Forbidden by toolbox").count(),
        4,
        "{out} {job:?}"
    );
    let conns = connections(&job);
    let expect = [
        ("localhost", "address-refused", "loopback"),
        (
            "metadata.test",
            "address-refused",
            "the cloud metadata service",
        ),
        ("intranet.test", "address-refused", "private"),
        ("169.254.169.254", "not-allowed", "address rule"),
    ];
    for (conn, (host, code, words)) in conns.iter().zip(expect) {
        assert_eq!(conn["host"], host, "{conn}");
        assert_eq!(conn["code"], code, "{conn}");
        assert!(
            conn["reason"].as_str().is_some_and(|r| r.contains(words)),
            "{conn}"
        );
    }
    assert_eq!(conns[1]["address"], "169.254.169.254");
    assert!(servers.requests().is_empty(), "{:?}", servers.requests());
}

#[test]
fn mode_none_answers_every_request_with_the_policy_that_refuses_it() {
    if !tools() {
        return;
    }
    let ws = workspace();
    let job = Run::command(
        ws.path(),
        &[
            "sh",
            "-c",
            "curl -sS -i http://example.org/; curl -sS https://example.org/; echo \"curl $?\"",
        ],
    )
    .without_probe()
    .opts(&["--net", "none"])
    .run();
    let out = job.stdout_text();
    assert!(
        out.starts_with(
            "HTTP/1.1 403 Forbidden by toolbox: policy \"default\" gives this job no network"
        ),
        "{out}"
    );
    assert!(out.contains("X-Toolbox-Egress: no-network"), "{out}");
    assert!(
        out.contains("network mode \"none\"") && out.contains("network mode \"host\""),
        "the body says why and what would do: {out}"
    );
    assert!(out.contains("curl 56"), "{out}");
    let egress = egress_of(&job);
    assert_eq!(egress["refused"], 2, "{egress}");
    assert!(connections(&job).iter().all(|c| c["code"] == "no-network"));
    // A job that tries nothing carries no egress in mode none.
    let quiet = Run::command(ws.path(), &["true"])
        .without_probe()
        .opts(&["--net", "none"])
        .run();
    assert!(quiet.record().get("egress").is_none(), "{quiet:?}");
}

#[test]
fn a_request_narrows_the_rules_and_widens_them_only_as_far_as_the_policy_lets_it() {
    if !tools() {
        return;
    }
    let servers = Servers::start();
    let (http, https) = (servers.http, servers.https);
    let dir = servers.dir.path().join("policies");
    std::fs::create_dir_all(&dir).expect("dir");
    let policy = dir.join("wide.toml");
    std::fs::write(
        &policy,
        format!(
            "extends = \"default\"\n[network]\nmode = \"allowlist\"\n\
             allow = [\"127.0.0.1:{http}\", \"127.0.0.1:{https}\"]\n\
             [overrides]\nallow = [\"*.example.org\"]\n"
        ),
    )
    .expect("policy");
    let ws = workspace();
    let run = |extra: &[&str]| {
        let mut opts = vec!["--policy", policy.to_str().expect("utf8")];
        opts.extend(extra);
        Run::command(
            ws.path(),
            &[
                "curl",
                "-sS",
                &format!("http://127.0.0.1:{http}/index.html"),
            ],
        )
        .without_probe()
        .opts(&opts)
        .run()
    };
    // Narrowed to the HTTPS port alone: the HTTP server is refused.
    let narrowed = format!("127.0.0.1:{https}");
    let job = run(&["--allow", &narrowed]);
    assert_eq!(connections(&job)[0]["code"], "not-allowed", "{job:?}");
    // Within the overrides: taken.
    let job = run(&[
        "--allow",
        &format!("127.0.0.1:{http}"),
        "--allow",
        "api.example.org",
    ]);
    assert_eq!(job.code, 0, "{job:?}");
    // Past them: refused before the job runs, naming what is allowed.
    let job = run(&["--allow", "pypi.org"]);
    assert_eq!(job.code, 125, "{job:?}");
    assert!(
        job.stderr.contains("allow pypi.org:443")
            && job.stderr.contains("only rules within")
            && job.stderr.contains("*.example.org:443"),
        "{}",
        job.stderr
    );
    let job = run(&["--allow", "127.0.0.0/8:*"]);
    assert_eq!(job.code, 125, "{job:?}");
    // Rules in another mode make no sense, and say so.
    let job = run(&["--net", "none", "--allow", &narrowed]);
    assert_eq!(job.code, 125, "{job:?}");
    assert!(
        job.stderr.contains("network mode allowlist"),
        "{}",
        job.stderr
    );
    let job = run(&["--allow", "not a rule"]);
    assert_eq!(job.code, 125, "{job:?}");
    assert!(
        job.stderr.contains("is not an egress rule"),
        "{}",
        job.stderr
    );
}

#[test]
fn the_daemon_logs_egress_in_the_record_the_audit_log_and_metrics_and_a_reload_never_widens_a_running_job(
) {
    if !tools() {
        return;
    }
    let servers = Servers::start();
    let (http, https) = (servers.http, servers.https);
    let dir = servers.dir.path().join("daemon-policies");
    std::fs::create_dir_all(&dir).expect("dir");
    let write_policy = |rules: &[u16]| {
        let rules: Vec<String> = rules.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        std::fs::write(
            dir.join("local.toml"),
            format!(
                "extends = \"default\"\n[network]\nmode = \"allowlist\"\nallow = [{}]\n",
                rules.join(", ")
            ),
        )
        .expect("policy");
    };
    write_policy(&[http]);
    let mut daemon = Daemon::start(&["--policies", dir.to_str().expect("utf8")]);
    let ws = workspace();
    // The HTTP status, and the proxy's answer to a CONNECT (000: none was made).
    let curl = |url: String| {
        format!("curl -sS -k -o /dev/null -w '%{{http_code}}:%{{http_connect}} ' {url}; ")
    };
    let plain = curl(format!("http://127.0.0.1:{http}/index.html"));
    let tls = curl(format!("https://127.0.0.1:{https}/index.html"));
    let mut body = job_body(ws.path(), &["sh", "-c", &(plain.clone() + &tls)]);
    body["policy"] = "local".into();
    let stream = daemon.job(&body);
    assert_eq!(
        String::from_utf8_lossy(&stream.output("stdout")),
        "200:000 000:403 "
    );
    let record = stream.exit().clone();
    let egress = &record["egress"];
    assert_eq!(
        (egress["allowed"].as_u64(), egress["refused"].as_u64()),
        (Some(1), Some(1))
    );
    let audit = daemon.audit_lines();
    let line = audit
        .iter()
        .find(|l| l["job_id"] == record["job_id"])
        .expect("the job's audit line");
    assert_eq!(line["result"]["egress"], *egress);
    let metrics =
        String::from_utf8_lossy(&daemon.request("GET", "/metrics", None).body).into_owned();
    for (decision, n) in [("allowed", 1), ("refused", 1), ("failed", 0)] {
        let line = format!("toolbox_egress_connections_total{{decision=\"{decision}\"}} {n}");
        assert!(metrics.contains(&line), "{line} not in:\n{metrics}");
    }
    assert!(metrics.contains("toolbox_egress_bytes_total{direction=\"down\"}"));

    // A job running while its policy is widened and reloaded keeps the rules it started
    // with; a new job gets the new ones.
    let mut body = job_body(ws.path(), &["sleep", "600"]);
    body["policy"] = "local".into();
    let running = daemon.detach(&body);
    write_policy(&[http, https]);
    toolbox_tests::daemon::nix_kill(daemon.pid(), libc::SIGHUP).expect("SIGHUP");
    assert!(toolbox_tests::wait_for(
        std::time::Duration::from_secs(10),
        || daemon.log().contains("SIGHUP: reloading")
    ));
    let exec = serde_json::json!({"argv": ["sh", "-c", tls]});
    let mut inside = toolbox_tests::daemon::JobStream::open_at(
        &daemon.socket,
        &format!("/v1/jobs/{running}/exec"),
        &exec,
    );
    inside.read_to_end();
    assert_eq!(
        String::from_utf8_lossy(&inside.output("stdout")),
        "000:403 "
    );
    let mut body = job_body(ws.path(), &["sh", "-c", &tls]);
    body["policy"] = "local".into();
    let fresh = daemon.job(&body);
    assert_eq!(String::from_utf8_lossy(&fresh.output("stdout")), "200:200 ");
    daemon.request("DELETE", &format!("/v1/jobs/{running}"), None);
    daemon.stop();
}

#[test]
fn a_loopback_job_has_the_proxy_s_ports_to_itself_and_no_proxy_variables() {
    if !tools() {
        return;
    }
    let ws = workspace();
    // The helper made listeners on them in the job's namespace: the supervisor closed them
    // before the tool ran, so a test suite's own server may take them.
    let script = "import os, socket\n\
                  for port in (3128, 1080):\n    \
                  s = socket.socket()\n    s.bind(('127.0.0.1', port))\n    s.listen()\n    \
                  print('bound', port)\n\
                  print(sorted(k for k in os.environ if 'proxy' in k.lower()))\n";
    let job = Run::command(ws.path(), &[&python(), "-c", script])
        .without_probe()
        .run();
    assert_eq!(job.code, 0, "{job:?}");
    assert_eq!(job.stdout_text(), "bound 3128\nbound 1080\n[]\n");
    assert!(job.record().get("egress").is_none(), "{job:?}");
}
